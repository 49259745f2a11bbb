"""PatchMerger: learned queries softly pool the normalised tokens (SPEC §3.10)."""

import torch
from torch import Tensor, nn

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState


class PatchMerger(Reducer):
    """Pre-block: x̂ = LN(x); K learned queries Q (init N(0, 1)); output softmax_N(Q x̂ᵀ) x̂ (scale 1)."""

    info = MethodInfo("PatchMerger", "soft merge", partitions=True)

    def __init__(self, dim: int, target: int) -> None:
        super().__init__(dim, target)
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(target, dim))

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        tokens = self.norm(x[:, state.num_prefix :])
        weights = (self.queries.to(tokens.dtype) @ tokens.transpose(1, 2)).softmax(dim=-1)  # [B, K, N]
        x, state = state.merge(x, weights @ tokens, weights.argmax(1))
        centres = self.queries.detach().expand(x.shape[0], -1, -1)
        return x, state, {"soft_assignment": weights.detach(), "centres": centres}
