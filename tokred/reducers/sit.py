"""SiT: the token slimming module, a learned soft merge (SPEC §3.9)."""

import torch
from torch import Tensor, nn

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState


class SiT(Reducer):
    """Pre-block: logits G = MLP(LN(x)) [B, N, K] with a learned temperature τ (init 1); each output token is
    the convex combination softmax_N(τ G)ᵀ x of the input tokens."""

    info = MethodInfo("SiT", "soft merge", partitions=True)

    def __init__(self, dim: int, target: int) -> None:
        super().__init__(dim, target)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, target))
        self.scale = nn.Parameter(torch.ones(1, 1, 1))

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        tokens = x[:, state.num_prefix :]
        weights = (self.scale * self.mlp(tokens)).softmax(dim=1).transpose(1, 2)  # [B, K, N]
        x, state = state.merge(x, weights @ tokens, weights.argmax(1))
        return x, state, {"soft_assignment": weights.detach()}
