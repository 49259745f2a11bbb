"""The token state that travels with x [B, N, C] from block to block."""

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from tokred.trace import StageTrace


def group_sum(values: Tensor, index: Tensor, count: int) -> Tensor:
    """Sums [B, count, D] of values [B, N, D] grouped by index [B, N] (entries outside [0, count) count nowhere).

    A scatter-add, except while exporting (torch.export, ONNX), where it is a one-hot matrix product: runtimes
    such as TensorRT lack scatters with a reduction. Both sum in the dtype of ``values``.
    """
    if torch.compiler.is_exporting():
        one_hot = index[:, None, :] == torch.arange(count, device=index.device)[None, :, None]  # [B, count, N]
        return torch.bmm(one_hot.to(values.dtype), values)
    inside = (index >= 0) & (index < count)
    summed = values.new_zeros(values.shape[0], count + 1, values.shape[-1])  # the last slot takes the outside
    slot = torch.where(inside, index, count)[..., None].expand_as(values)
    return summed.scatter_add_(1, slot, values)[:, :count]


@dataclass
class TokenState:
    """Bookkeeping for the tokens x [B, N, C]; the first ``num_prefix`` (class token, registers) are never reduced.

    Attributes:
        num_prefix: leading tokens no reducer touches.
        class_token: the first prefix token is a class token (False for models that pool their spatial tokens
            without one: reducers that score by the class token's attention use the attention received instead).
        size: [B, N] original patches per token, for size-weighted merges and proportional attention; None
            while every token is one patch.
        mask: [B, N] bool, False for padding slots (ATS); None while there are none.
        proportional: add log(size) to the attention logits (ToMe).
        policy: [B, N] float keep decisions (DynamicViT training): attention ignores dropped keys (each token
            still sees itself) through the policy-masked softmax; None otherwise.
        patch_token: [B, P] while tracing: the spatial token holding each original patch, -1 once dropped.
        representative: [B, N - num_prefix] while tracing: the original patch each spatial token stands for (the
            patch a pruning stage kept, the centre's patch for a merge around centre tokens), -1 for none.
    """

    num_prefix: int
    class_token: bool = True
    size: Tensor | None = None
    mask: Tensor | None = None
    proportional: bool = False
    policy: Tensor | None = None
    patch_token: Tensor | None = None
    representative: Tensor | None = None

    @classmethod
    def start(cls, x: Tensor, num_prefix: int, tracing: bool, class_token: bool = True) -> "TokenState":
        batch, n = x.shape[:2]
        grid = torch.arange(n - num_prefix, device=x.device).expand(batch, -1) if tracing else None
        return cls(num_prefix, class_token, patch_token=grid, representative=grid)

    def attn_bias(self, dtype: torch.dtype) -> Tensor | None:
        """Additive key bias [B, 1, 1, N] for attention, or None when no token needs one."""
        bias = self.size.log().to(dtype) if self.proportional and self.size is not None else None
        if self.mask is not None:
            masked = torch.zeros(self.mask.shape, device=self.mask.device, dtype=dtype)
            masked = masked.masked_fill(~self.mask, torch.finfo(dtype).min)
            bias = masked if bias is None else bias + masked
        return None if bias is None else bias[:, None, None, :]

    def token_weight(self, x: Tensor) -> Tensor | None:
        """[B, N] how much each token counts in a mean over tokens: the patches it holds where sizes are tracked
        (ToMe), 0 for padding slots (ATS) and for tokens dropped in training (DynamicViT); None while every token
        counts once."""
        weight = None
        for factor in (self.size, self.mask, self.policy):
            if factor is not None:
                weight = factor.to(x.dtype) if weight is None else weight * factor.to(x.dtype)
        return weight

    def spatial_mask(self, x: Tensor) -> Tensor:
        """[B, N - num_prefix] bool, True for real spatial tokens."""
        if self.mask is None:
            return torch.ones(x.shape[0], x.shape[1] - self.num_prefix, dtype=torch.bool, device=x.device)
        return self.mask[:, self.num_prefix :]

    def select(self, x: Tensor, keep: Tensor, valid: Tensor | None = None) -> tuple[Tensor, "TokenState"]:
        """Keep the spatial tokens ``keep`` [B, K] (indices among the current spatial tokens, in output order).

        ``valid`` [B, K] marks padding slots (their index may be anything; they become masked copies of token 0).
        """
        p = self.num_prefix
        keep = keep if valid is None else torch.where(valid, keep, 0)
        seq = torch.cat([torch.arange(p, device=x.device).expand(x.shape[0], -1), keep + p], dim=1)  # [B, P + K]
        out = x.gather(1, seq[..., None].expand(-1, -1, x.shape[-1]))
        size = None if self.size is None else self.size.gather(1, seq)
        mask = None if self.mask is None and valid is None else self._gathered_mask(seq, valid)
        patch_token, representative = None, None
        if self.patch_token is not None:
            position = torch.full(x.shape[:1] + (x.shape[1] - p + 1,), -1, device=x.device)  # last slot: dropped
            slot = torch.where(valid, keep, x.shape[1] - p) if valid is not None else keep
            position.scatter_(1, slot, torch.arange(keep.shape[1], device=x.device).expand_as(keep))
            patch_token = self._compose(position[:, :-1])
            representative = self._represent(keep if valid is None else torch.where(valid, keep, -1))
        return out, replace(self, size=size, mask=mask, patch_token=patch_token, representative=representative)

    def merge(
        self, x: Tensor, merged: Tensor, assignment: Tensor, centres: Tensor | None = None
    ) -> tuple[Tensor, "TokenState"]:
        """Replace the spatial tokens by ``merged`` [B, K, C]; ``assignment`` [B, N - num_prefix] gives each old
        spatial token's new token (-1: dropped). Sizes add up along the assignment. ``centres`` [B, K] names the
        old spatial token each new token stands for (-1: none; None: no new token has one); only tracing uses it."""
        p = self.num_prefix
        out = torch.cat([x[:, :p], merged], dim=1)
        size = None
        if self.size is not None:
            size = group_sum(self.size[:, p:, None], assignment, merged.shape[1])[..., 0]
            size = torch.cat([self.size[:, :p], size], dim=1)
        patch_token, representative = None, None
        if self.patch_token is not None:
            patch_token = self._compose(assignment)
            if centres is None:
                centres = torch.full(merged.shape[:2], -1, dtype=torch.long, device=x.device)
            representative = self._represent(centres)
        return out, replace(self, size=size, patch_token=patch_token, representative=representative)

    def _gathered_mask(self, seq: Tensor, valid: Tensor | None) -> Tensor:
        mask = torch.ones_like(seq, dtype=torch.bool) if self.mask is None else self.mask.gather(1, seq)
        if valid is not None:
            mask[:, self.num_prefix :] &= valid
        return mask

    def _compose(self, new_index: Tensor) -> Tensor:
        """patch_token after a stage that sends old spatial token t to new_index[:, t] (-1: dropped)."""
        assert self.patch_token is not None
        moved = new_index.gather(1, self.patch_token.clamp_min(0))
        return torch.where(self.patch_token >= 0, moved, -1)

    def _represent(self, old_token: Tensor) -> Tensor:
        """representative after a stage whose new token k stands for old spatial token old_token[:, k] (-1: none)."""
        assert self.representative is not None
        picked = self.representative.gather(1, old_token.clamp_min(0))
        return torch.where(old_token >= 0, picked, -1)

    def stage_trace(self, x: Tensor, block: int, **details: Tensor | None) -> StageTrace:
        """The trace of the stage that produced x (call only while tracing)."""
        assert self.patch_token is not None and self.representative is not None
        batch, tokens = x.shape[0], x.shape[1] - self.num_prefix
        held = torch.where(self.patch_token >= 0, self.patch_token, tokens)  # dropped patches land in a spare slot
        count = group_sum(torch.ones_like(held)[..., None], held, tokens)[..., 0]
        patch = torch.full((batch, tokens + 1), -1, dtype=torch.long, device=x.device)
        patch.scatter_(1, held, torch.arange(held.shape[1], device=x.device).expand_as(held))
        kept = torch.where(count == 1, patch[:, :tokens], -1)
        counts = self.spatial_mask(x).sum(-1)
        return StageTrace(block, self.patch_token, kept, self.representative, counts, **details)
