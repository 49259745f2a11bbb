"""ToMe: bipartite soft matching on keys, size-weighted merges, proportional attention (SPEC §3.6)."""

from dataclasses import replace

import torch
from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, Reducer
from tokred.state import TokenState


class ToMe(Reducer):
    """In-block: merge ``removal`` tokens (at most ⌊(N − 1)/2⌋, the class token protected) of set A (even
    sequence positions) into their most similar token of set B (odd positions) by mean-over-heads key cosine
    similarity; merged tokens are size-weighted means and later attention adds log(size) to the logits."""

    hook = "in"
    needs = frozenset({"keys"})

    def __init__(self, dim: int, target: int, removal: int) -> None:
        super().__init__(dim, target)
        self.removal = removal

    @classmethod
    def stages(cls, dim: int, targets: list[int], num_patches: int) -> list[Reducer]:  # type: ignore[override]
        """Removals come from the targets (R_s = K_{s-1} - K_s), not from the counts actually reached."""
        previous = [num_patches, *targets][:-1]
        return [cls(dim, target, before - target) for before, target in zip(previous, targets, strict=True)]

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        if state.num_prefix != 1:
            raise ValueError("ToMe here supports models whose only prefix token is the class token (no registers)")
        assert extras.keys is not None
        batch, n, _ = x.shape
        removal = min(self.removal, (n - 1) // 2)
        if removal <= 0:
            return x, state, {}
        with torch.no_grad():
            metric = extras.keys / extras.keys.norm(dim=-1, keepdim=True)
            scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # [B, Na, Nb]
            scores[:, 0] = -torch.inf  # the class token (A's first) never merges
            best, best_b = scores.max(-1)
            order = best.argsort(dim=-1, descending=True, stable=True)
            sources, unmerged = order[:, :removal], order[:, removal:].sort(-1).values
            # new sequence = [unmerged A (position order), B]; every old token's new position
            n_a, n_unmerged = scores.shape[1], unmerged.shape[1]
            new_a = torch.empty(batch, n_a, dtype=torch.long, device=x.device)
            new_a.scatter_(1, unmerged, torch.arange(n_unmerged, device=x.device).expand(batch, -1))
            new_a.scatter_(1, sources, n_unmerged + best_b.gather(1, sources))
            new_b = n_unmerged + torch.arange(n - n_a, device=x.device).expand(batch, -1)
            new_position = torch.stack([new_a[:, : n - n_a], new_b], dim=-1).flatten(1)  # interleave A, B
            if n_a > n - n_a:
                new_position = torch.cat([new_position, new_a[:, -1:]], dim=1)
        size = torch.ones(batch, n, device=x.device, dtype=x.dtype) if state.size is None else state.size.to(x.dtype)
        spatial_new = new_position[:, 1:] - 1  # spatial old → spatial new (the class token stays first)
        weighted = torch.zeros(batch, n - 1 - removal, x.shape[-1], device=x.device, dtype=x.dtype)
        weighted.scatter_add_(1, spatial_new[..., None].expand(-1, -1, x.shape[-1]), (x * size[..., None])[:, 1:])
        total = torch.zeros(batch, n - 1 - removal, device=x.device, dtype=x.dtype).scatter_add_(
            1, spatial_new, size[:, 1:]
        )
        state = replace(state, size=size, proportional=True)
        x, state = state.merge(x, weighted / total[..., None], spatial_new)
        return x, state, {}
