"""Log-domain Sinkhorn transport between clusters and tokens (SPEC §3.11), in plain PyTorch."""

import math

import torch
from torch import Tensor

from tokred.reference.distance import accumulation_dtype

SINKHORN_MARGINALS = ("paper", "balanced")


def sinkhorn_log_marginals(num_clusters: int, num_tokens: int, marginals: str) -> tuple[float, float]:
    """(log μ_k, log ν_j) for K clusters and N tokens.

    "paper": μ = ν = 1/(K + N). "balanced": μ = 1/K, ν = 1/N. Either way the plan is scaled by 1/ν, so every
    token's column of the final plan sums to 1.
    """
    if marginals == "paper":
        total = math.log(num_clusters + num_tokens)
        return -total, -total
    return -math.log(num_clusters), -math.log(num_tokens)


def sinkhorn(scores: Tensor, eps: float = 1.0, iters: int = 3, marginals: str = "paper") -> Tensor:
    """Transport plan [B, K, N] from scores [B, K, N] after T ≥ 1 log-domain Sinkhorn iterations.

    u_k = log μ_k - LSE_j(Z_kj/ε + v_j), then v_j = log ν_j - LSE_k(Z_kj/ε + u_k), starting from
    u = v = 0; the plan is exp(Z/ε + u + v) / ν. After the last column update that is the softmax over
    clusters of Z/ε + u, computed as such: its columns sum to 1 in the working precision even where
    Z/ε is huge (ε = 1e-6: rounding v alone to float32 moves the plan's entries by several percent).
    Differentiable in ``scores``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1 (without a column update no column sums to 1), got {iters}")
    log_mu, log_nu = sinkhorn_log_marginals(scores.shape[1], scores.shape[2], marginals)
    z = scores.to(accumulation_dtype(scores.dtype)) / eps
    v = z.new_zeros(z.shape[0], z.shape[2])
    for t in range(iters):
        u = log_mu - torch.logsumexp(z + v[:, None, :], dim=2)
        if t + 1 < iters:
            v = log_nu - torch.logsumexp(z + u[:, :, None], dim=1)
    return torch.softmax(z + u[:, :, None], dim=1).to(scores.dtype)
