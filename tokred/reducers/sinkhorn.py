"""Sinkhorn: entropic optimal transport of the tokens onto learned unit-norm centres (SPEC §3.11)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokred import ops
from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState


class Sinkhorn(Reducer):
    """Pre-block: cosine scores between the unit tokens and K learned centres (init N(0, 1), projected to the
    unit sphere in place on every training forward, as the study did; in eval projected without changing the
    parameter), a log-domain Sinkhorn plan Π [B, K, N], and merged tokens Π x̂ (a sum of unit tokens).

    Options:
        eps: entropic regularisation (the study: 1.0).
        iters: Sinkhorn iterations (the study: 3).
        marginals: "paper" or "balanced" (see tokred.ops.sinkhorn).
        merge: "sum" (the study: Σ_j Π_kj x_j) or "mean" (divided by the cluster's mass Σ_j Π_kj).
        unit_tokens: merge the unit-normalised tokens (the study) or, when False, the tokens as they are.
        ``marginals="balanced", merge="mean", unit_tokens=False`` is the fixed mode of SPEC §10.4.
    """

    info = MethodInfo("Sinkhorn", "soft merge", partitions=True)

    def __init__(
        self,
        dim: int,
        target: int,
        eps: float = 1.0,
        iters: int = 3,
        marginals: str = "paper",
        merge: str = "sum",
        unit_tokens: bool = True,
    ) -> None:
        super().__init__(dim, target)
        if merge not in ("sum", "mean"):
            raise ValueError(f"merge must be 'sum' or 'mean', got {merge!r}")
        if iters < 1 or not eps > 0:
            raise ValueError(f"Sinkhorn needs iters >= 1 and eps > 0, got iters={iters}, eps={eps}")
        self.eps, self.iters, self.marginals, self.merge, self.unit_tokens = eps, iters, marginals, merge, unit_tokens
        self.centres = nn.Parameter(torch.randn(target, dim))

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        if self.training:
            with torch.no_grad():
                self.centres.copy_(F.normalize(self.centres, dim=-1))
            centres = self.centres
        else:  # the same values, without mutating a parameter (exported and compiled graphs)
            centres = F.normalize(self.centres, dim=-1)
        raw = x[:, state.num_prefix :]
        tokens = F.normalize(raw, dim=-1)
        scores = centres.to(tokens.dtype) @ tokens.transpose(1, 2)  # [B, K, N]
        plan = ops.sinkhorn(scores, self.eps, self.iters, self.marginals)
        merged = plan @ (tokens if self.unit_tokens else raw)
        if self.merge == "mean":
            merged = merged / plan.sum(-1, keepdim=True)
        x, state = state.merge(x, merged, plan.argmax(1))
        return x, state, {"soft_assignment": plan.detach(), "centres": centres.detach().expand(x.shape[0], -1, -1)}
