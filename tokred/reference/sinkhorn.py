"""Log-domain Sinkhorn transport between clusters and tokens (SPEC §3.11), in plain PyTorch."""

import math

import torch
from torch import Tensor

from tokred.reference.distance import accumulation_dtype

SINKHORN_MARGINALS = ("paper", "balanced")


def sinkhorn_log_marginals(num_clusters: int, num_tokens: int, marginals: str) -> tuple[float, float, float]:
    """(log μ_k, log ν_j, log scale) for K clusters and N tokens.

    "paper": μ = ν = 1/(K + N), plan scaled by K + N. "balanced": μ = 1/K, ν = 1/N, plan scaled by N.
    Either way every token's column of the final plan sums to 1.
    """
    if marginals == "paper":
        total = math.log(num_clusters + num_tokens)
        return -total, -total, total
    return -math.log(num_clusters), -math.log(num_tokens), math.log(num_tokens)


def sinkhorn(scores: Tensor, eps: float = 1.0, iters: int = 3, marginals: str = "paper") -> Tensor:
    """Transport plan [B, K, N] from scores [B, K, N] after T log-domain Sinkhorn iterations.

    u_k = log μ_k - LSE_j(Z_kj/ε + v_j), then v_j = log ν_j - LSE_k(Z_kj/ε + u_k), starting from
    u = v = 0; the plan is exp(Z/ε + u + v) times the marginals' scale. Differentiable in ``scores``.
    """
    log_mu, log_nu, log_scale = sinkhorn_log_marginals(scores.shape[1], scores.shape[2], marginals)
    z = scores.to(accumulation_dtype(scores.dtype)) / eps
    u = z.new_zeros(z.shape[:2])
    v = z.new_zeros(z.shape[0], z.shape[2])
    for _ in range(iters):
        u = log_mu - torch.logsumexp(z + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(z + u[:, :, None], dim=1)
    return torch.exp(z + u[:, :, None] + v[:, None, :] + log_scale).to(scores.dtype)
