"""DynamicViT: learned keep/drop predictors, trained with Gumbel-softmax masks (SPEC §3.4)."""

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState


class Predictor(nn.Module):
    """Keep/drop log-probabilities [B, N, 2] (channel 0: keep) for tokens x [B, N, C] under the keep
    decisions policy [B, N]: a local half of the features plus a policy-weighted global mean of the other half
    (the study's value wherever it is finite; 0 + eps, not 0/0, for an image with every token dropped)."""

    def __init__(self, dim: int, eps_in_denominator: bool = False) -> None:
        super().__init__()
        self.eps_in_denominator = eps_in_denominator
        self.inner = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.outer = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2)
        )

    def forward(self, x: Tensor, policy: Tensor) -> Tensor:
        h = self.inner(x)
        half = x.shape[-1] // 2
        weight = policy[..., None].to(h.dtype)
        total = (h[..., half:] * weight).sum(1, keepdim=True)
        count = weight.sum(1, keepdim=True)
        # the study adds its eps after the division (the option moves it into the denominator); an image whose
        # tokens are all dropped has total = 0 and count = 0: its mean is 0 + eps, where the study's is 0/0 = NaN
        if self.eps_in_denominator:
            shared = total / (count + 1e-6)
        else:
            shared = total / count.masked_fill(count == 0, 1) + 1e-6
        features = torch.cat([h[..., :half], shared.expand(-1, x.shape[1], -1)], dim=-1)
        return self.outer(features).log_softmax(dim=-1)


class DynamicViT(Reducer):
    """Pre-block. Training: no token is removed; a hard Gumbel-softmax sample of the predictor (straight-through)
    updates the keep decisions, which mask attention in every block (policy-masked softmax, from block 0 on),
    and the decisions go to :class:`DynamicViTLoss` via ``model(x, aux=True)``. Inference: the ``target``
    tokens with the highest keep score are kept, in score order.

    Options:
        eps_in_denominator: put the predictor's 1e-6 in the denominator of its global mean (the study adds
            it after the division).
    """

    info = MethodInfo("DynamicViT", "learned pruning", keeps_patches=True, fixed_count=True)

    def __init__(self, dim: int, target: int, eps_in_denominator: bool = False) -> None:
        super().__init__(dim, target)
        self.predictor = Predictor(dim, eps_in_denominator)

    def prepare(self, x: Tensor, state: TokenState) -> TokenState:
        if not self.training:
            return state
        return replace(state, policy=torch.ones(x.shape[:2], device=x.device, dtype=x.dtype))

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        p = state.num_prefix
        tokens = x[:, p:]
        if self.training:
            assert state.policy is not None, "DynamicViT.prepare sets the policy in training"
            decision = state.policy[:, p:]
            sample = F.gumbel_softmax(self.predictor(tokens, decision), tau=1.0, hard=True)[..., 0]
            keep = sample * decision  # a dropped token stays dropped
            return x, replace(state, policy=torch.cat([state.policy[:, :p], keep], dim=1)), {"decision": keep}
        score = self.predictor(tokens, state.spatial_mask(x))[..., 0]
        x, state = state.select(x, score.argsort(dim=-1, descending=True)[:, : self.target])
        return x, state, {}


class DynamicViTLoss(nn.Module):
    """DynamicViT's training loss (SPEC §3.4, §6).

    L = w_cls · base(logits, target) + w_ratio · mean_s mean_b (mean_j D_s − r_s)²
        + w_kd · KL(softmax(teacher) ‖ softmax(logits)) + w_tok · mean over kept tokens of (tok − tok_teacher)²

    Args:
        base_criterion: the dataset's criterion (cross-entropy, soft-target CE, ASL, ...).
        keep_ratios: the ratio target r_s of each stage (r^s for keep rate r).
    """

    def __init__(
        self,
        base_criterion: Callable[[Tensor, Tensor], Tensor],
        keep_ratios: Sequence[float],
        cls_weight: float = 1.0,
        ratio_weight: float = 2.0,
        cls_distill_weight: float = 0.5,
        token_distill_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.base_criterion = base_criterion
        self.keep_ratios = list(keep_ratios)
        self.weights = (cls_weight, ratio_weight, cls_distill_weight, token_distill_weight)

    def forward(
        self, logits: Tensor, aux: dict[str, object], target: Tensor, teacher: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """logits [B, classes]; aux from ``model(x, aux=True)``: "decisions" (per stage [B, N]) and "tokens"
        (final normed spatial tokens [B, N, C]); teacher: (logits, final normed spatial tokens) or None."""
        cls_w, ratio_w, kd_w, tok_w = self.weights
        decisions: list[Tensor] = aux["decisions"]  # type: ignore[assignment]
        if len(decisions) != len(self.keep_ratios):
            raise ValueError(
                f"{len(decisions)} stage decisions for {len(self.keep_ratios)} keep ratios: is the model in train mode?"
            )
        ratio = torch.stack([(d.mean(1) - r).square().mean() for d, r in zip(decisions, self.keep_ratios, strict=True)])
        loss = cls_w * self.base_criterion(logits, target) + ratio_w * ratio.mean()
        if teacher is None:
            return loss
        teacher_logits, teacher_tokens = teacher
        kd = F.kl_div(logits.log_softmax(-1), teacher_logits.log_softmax(-1), reduction="batchmean", log_target=True)
        loss = loss + kd_w * kd
        final = decisions[-1]
        if final.sum() >= 0.1:
            tokens: Tensor = aux["tokens"]  # type: ignore[assignment]
            kept = final > 0.5
            loss = loss + tok_w * (tokens[kept] - teacher_tokens[kept]).square().mean()
        return loss
