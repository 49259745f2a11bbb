"""K-Medoids: cluster tokens around medoids weighted by the attention they receive (SPEC §3.7)."""

from torch import Tensor

from tokred import ops
from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState


class KMedoids(Reducer):
    """Pre-block: K-Medoids over the spatial tokens, started from the K tokens that receive the most attention
    in the previous block; the medoid tokens themselves go on (hard merge that keeps the centres).

    Options:
        iters: update iterations (the study: 3).
        rule: "paper" (the study's update) or "medoid" (textbook medoid of each cluster).
    """

    info = MethodInfo("K-Medoids", "hard merge", keeps_patches=True, partitions=True, fixed_count=True)

    needs = frozenset({"received"})
    first_block = 1  # needs the attention map of the block before

    def __init__(self, dim: int, target: int, iters: int = 3, rule: str = "paper") -> None:
        super().__init__(dim, target)
        self.iters, self.rule = iters, rule

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        assert extras.received is not None
        p = state.num_prefix
        tokens = x[:, p:]
        medoids, assignment = ops.kmedoids(
            tokens.detach(), extras.received[:, p:].detach(), self.target, self.iters, self.rule
        )
        centres = tokens.gather(1, medoids[..., None].expand(-1, -1, x.shape[-1]))
        x, state = state.merge(x, centres, assignment, medoids)
        return x, state, {"centres": centres.detach()}
