"""ToMe: bipartite soft matching on keys, size-weighted merges, proportional attention (SPEC §3.6)."""

from dataclasses import replace

import torch
from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState, group_sum


def match(metric: Tensor, removal: int) -> Tensor:
    """New position [B, N] of every spatial token after merging ``removal`` tokens of set A (odd positions) into
    their most similar token of set B (even positions). metric [B, N, d] of the spatial tokens. New order:
    [unmerged A in position order, B]. (The study split [class token, spatial tokens] by alternate positions with
    the class token first in A, never merging: the same sets, so prefix tokens of any kind stay out of it.)"""
    batch, n, _ = metric.shape
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, 1::2] @ metric[:, ::2].transpose(1, 2)  # [B, Na, Nb]
    best, best_b = scores.max(-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    sources, unmerged = order[:, :removal], order[:, removal:].sort(-1).values
    n_a, n_unmerged = scores.shape[1], unmerged.shape[1]
    new_a = torch.empty(batch, n_a, dtype=torch.long, device=metric.device)
    new_a.scatter_(1, unmerged, torch.arange(n_unmerged, device=metric.device).expand(batch, -1))
    new_a.scatter_(1, sources, n_unmerged + best_b.gather(1, sources))
    new_b = n_unmerged + torch.arange(n - n_a, device=metric.device).expand(batch, -1)
    position = torch.stack([new_b[:, :n_a], new_a], dim=-1).flatten(1)  # interleave B and A again
    return torch.cat([position, new_b[:, n_a:]], dim=1)  # the last B token when N is odd


def weighted_mean(values: Tensor, size: Tensor, index: Tensor, count: int) -> Tensor:
    """Size-weighted means [B, count, D] of values [B, N, D] grouped by index [B, N], in the promoted dtype of
    values and size [B, N] (under autocast the keys are half precision, the sizes float32)."""
    summed = group_sum(values * size[..., None], index, count)
    return summed / group_sum(size[..., None], index, count)


class ToMe(Reducer):
    """In-block: merge ``removal`` spatial tokens by bipartite soft matching on the mean-over-heads keys; merged
    tokens are size-weighted means and later attention adds log(size) to the logits. Prefix tokens (class token,
    registers) stay out of the matching.

    Options:
        rounds: False (the study): one matching round, so at most ⌊(N − 1)/2⌋ tokens merge per stage (r = 0.5
            ends at 25 tokens, r = 0.25 at 98/61/52). True: repeat rounds, merging the keys as well, until
            the stage's removal is reached.
    """

    info = MethodInfo("ToMe", "hard merge", partitions=True)

    hook = "in"
    needs = frozenset({"keys"})

    def __init__(self, dim: int, target: int, removal: int, rounds: bool = False) -> None:
        super().__init__(dim, target)
        self.removal, self.rounds = removal, rounds

    @classmethod
    def stages(cls, dim: int, targets: list[int], num_patches: int, rounds: bool = False) -> list[Reducer]:  # type: ignore[override]
        """Removals come from the targets (R_s = K_{s-1} - K_s), not from the counts actually reached."""
        previous = [num_patches, *targets][:-1]
        return [cls(dim, t, before - t, rounds) for before, t in zip(previous, targets, strict=True)]

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        assert extras.keys is not None
        p = state.num_prefix
        metric, remaining = extras.keys[:, p:], self.removal
        while remaining > 0 and (x.shape[1] - p) // 2 > 0:
            removal = min(remaining, (x.shape[1] - p) // 2)
            if state.size is None:
                state = replace(state, size=torch.ones(x.shape[:2], device=x.device, dtype=x.dtype))
            with torch.no_grad():
                spatial_new = match(metric, removal)
            count = x.shape[1] - p - removal
            size = state.size[:, p:].to(x.dtype)
            merged = weighted_mean(x[:, p:], size, spatial_new, count)
            metric = weighted_mean(metric, size, spatial_new, count)
            x, state = replace(state, proportional=True).merge(x, merged, spatial_new)
            remaining -= removal
            if not self.rounds:
                break
        return x, state, {}
