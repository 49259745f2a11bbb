"""DPC-KNN: density-peak clustering, merged by learned token weights (SPEC §3.8)."""

import torch
from torch import Tensor, nn

from tokred import ops
from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState, group_sum


class DPCKNN(Reducer):
    """Pre-block: cluster the spatial tokens around the K density peaks, then merge each cluster into the
    ω-weighted mean of its members, ω_i = exp(score(x_i)) from a learned Linear(C, 1).

    Options:
        k_neighbors: neighbours in the density (the study: 5, self included).
        tie_break: "index" (deterministic) or "noise" (the study's U(0, 1)·1e-6 added to the densities).
    """

    info = MethodInfo("DPC-KNN", "hard merge", keeps_patches=True, partitions=True, fixed_count=True)

    def __init__(self, dim: int, target: int, k_neighbors: int = 5, tie_break: str = "index") -> None:
        super().__init__(dim, target)
        if tie_break not in ("index", "noise"):
            raise ValueError(f"tie_break must be 'index' or 'noise', got {tie_break!r}")
        self.k_neighbors, self.tie_break = k_neighbors, tie_break
        self.score = nn.Linear(dim, 1)

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        p = state.num_prefix
        tokens = x[:, p:]
        noise = 1e-6 * torch.rand(tokens.shape[:2], device=x.device) if self.tie_break == "noise" else None
        centres, assignment = ops.dpc_knn(tokens.detach(), self.target, self.k_neighbors, None, noise)
        weight = self.score(tokens).exp()  # [B, N, 1]
        total = group_sum(weight, assignment, self.target)
        summed = group_sum(weight * tokens, assignment, self.target)
        centre_tokens = tokens.gather(1, centres[..., None].expand(-1, -1, x.shape[-1]))
        x, state = state.merge(x, summed / (total + 1e-6), assignment, centres)
        return x, state, {"centres": centre_tokens.detach()}
