"""The yardsticks of bench/ops.py: each operator as the plain batched PyTorch a researcher would write, the way
the study's code does it (GEMM-backed distances, topk, gather, logsumexp, searchsorted), and the floors of the work.

Each baseline runs the algorithm of its operator (SPEC §3.5, §3.7, §3.8, §3.11) with the operator's
deterministic tie-breaks, for the case the benchmark times: every token valid, the default rule.
tests/test_bench_baselines.py checks each against tokred.reference.
"""

import math

import torch
from torch import Tensor

from tokred.reference.ats import ats_quantiles
from tokred.reference.sinkhorn import sinkhorn_log_marginals


def gram_distance(x: Tensor) -> Tensor:
    """Euclidean distances [B, N, N] between the rows of x [B, N, C] from one batched GEMM.

    d²_ij = |x_i|² + |x_j|² - 2 x_i·x_j (torch.baddbmm), clamped at 0, with an exact zero diagonal.
    """
    sq = x.square().sum(-1)  # [B, N]
    d2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], x, x.mT, alpha=-2).clamp_min_(0)
    d2.diagonal(dim1=1, dim2=2).zero_()
    return d2.sqrt_()


def gram(x: Tensor, out: Tensor) -> Tensor:
    """The clustering floor: the Gram matrix x·xᵀ [B, N, N] of x [B, N, C], one batched GEMM written to ``out``."""
    return torch.baddbmm(out, x, x.mT, beta=0, out=out)


def copy(src: Tensor, dst: Tensor) -> Tensor:
    """The memory floor: read ``src`` once and write ``dst`` once (as many bytes as src)."""
    return dst.copy_(src)


def top(values: Tensor, k: int) -> Tensor:
    """Indices [B, k] of the k largest of values [B, N], descending, lower index first on ties (as the ops)."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def dpc_knn(x: Tensor, num_clusters: int, k_neighbors: int = 5) -> tuple[Tensor, Tensor]:
    """DPC-KNN (SPEC §3.8) as the study writes it, batched: GEMM distances, topk, masked min, gather.

    Args:
        x: [B, N, C] tokens.
        num_clusters: K, 1 ≤ K ≤ N.
        k_neighbors: neighbours in the density estimate (self included).

    Returns:
        centres: [B, K] int64 in descending score order; assignment: [B, N] int64 in [0, K).
    """
    batch, n, channels = x.shape
    dist = gram_distance(x) / math.sqrt(channels)  # [B, N, N]
    nearest = dist.topk(min(k_neighbors, n), dim=-1, largest=False).values
    density = torch.exp(-nearest.square().mean(-1))  # [B, N]
    index = torch.arange(n, device=x.device)
    rho_i, rho_j = density[:, :, None], density[:, None, :]
    denser = (rho_j > rho_i) | ((rho_j == rho_i) & (index[None, :] < index[:, None]))  # [B, i, j]
    image_max = dist.flatten(1).amax(-1)[:, None, None]  # [B, 1, 1]
    parent_dist = torch.where(denser, dist, image_max).amin(-1)  # the densest token gets the image maximum
    centres = top(density * parent_dist, num_clusters)  # [B, K]
    assignment = dist.gather(1, centres[:, :, None].expand(-1, -1, n)).argmin(1)  # [B, N]
    assignment.scatter_(1, centres, torch.arange(num_clusters, device=x.device).expand(batch, -1))
    return centres, assignment


def kmedoids(x: Tensor, weights: Tensor, num_clusters: int, iters: int = 3) -> tuple[Tensor, Tensor]:
    """K-Medoids with the study's cost w_i · Σ_j D_ij (SPEC §3.7, rule "paper"), batched over images and clusters.

    Args:
        x: [B, N, C] tokens.
        weights: [B, N]; the initial medoids are the K heaviest.
        num_clusters: K, 1 ≤ K ≤ N.
        iters: T ≥ 0 update iterations.

    Returns:
        medoids: [B, K] int64 in the order of the initial weights; assignment: [B, N] int64 nearest medoid.
    """
    batch, n, _ = x.shape
    dist = gram_distance(x)  # [B, N, N]
    medoids = top(weights, num_clusters)  # [B, K]
    cost = weights.to(dist.dtype) * dist.sum(-1)  # [B, N], iteration-invariant
    index = torch.arange(n, device=x.device).expand(batch, -1)

    def nearest(medoids: Tensor) -> Tensor:
        return dist.gather(2, medoids[:, None, :].expand(-1, n, -1)).argmin(-1)  # [B, N]

    for _ in range(iters):
        assignment = nearest(medoids)
        lowest = cost.new_full((batch, num_clusters), math.inf).scatter_reduce_(1, assignment, cost, "amin")
        candidate = torch.where(cost == lowest.gather(1, assignment), index, n)  # members reaching the minimum
        best = torch.full_like(medoids, n).scatter_reduce_(1, assignment, candidate, "amin")  # lowest index
        medoids = torch.where(best < n, best, medoids)  # an empty cluster keeps its medoid
    return medoids, nearest(medoids)


def sinkhorn(scores: Tensor, eps: float = 1.0, iters: int = 3, marginals: str = "paper") -> Tensor:
    """Transport plan [B, K, N] from scores [B, K, N]: T log-domain Sinkhorn iterations as the study writes them.

    u = log μ - LSE_j(Z/ε + v), v = log ν - LSE_k(Z/ε + u), T times from u = v = 0; plan exp(Z/ε + u + v) / ν.
    """
    log_mu, log_nu = sinkhorn_log_marginals(scores.shape[1], scores.shape[2], marginals)
    z = scores / eps
    v = z.new_zeros(z.shape[0], 1, z.shape[2])
    for _ in range(iters):
        u = log_mu - torch.logsumexp(z + v, dim=2, keepdim=True)  # [B, K, 1]
        v = log_nu - torch.logsumexp(z + u, dim=1, keepdim=True)  # [B, 1, N]
    return torch.exp(z + u + (v - log_nu))


def ats_sample(scores: Tensor, num_samples: int, rule: str = "nearest") -> tuple[Tensor, Tensor, Tensor]:
    """ATS inverse-transform sampling (SPEC §3.5) with every token valid: cumsum, searchsorted, dedupe.

    Args:
        scores: [B, N] significance (negatives count as 0).
        num_samples: K quantile points.
        rule: "nearest" (closest CDF value, first index on ties) or "inverse" (first CDF value ≥ q).

    Returns:
        ids: [B, K] int64 unique ascending, right-padded with -1; mask: [B, K] bool; counts: [B] int64.
    """
    s = scores.double().clamp_min(0)
    cdf = torch.cumsum(s / (s.sum(-1, keepdim=True) + 1e-6), dim=-1)  # [B, N]
    q = ats_quantiles(num_samples, scores.device).expand(scores.shape[0], -1).contiguous()  # [B, K]
    last = scores.shape[1] - 1
    above = torch.searchsorted(cdf, q)  # first index with cdf ≥ q
    if rule == "nearest":
        below = torch.searchsorted(cdf, cdf.gather(1, (above - 1).clamp(0, last)))  # first index of that value
        gap_above = torch.where(above <= last, cdf.gather(1, above.clamp_max(last)) - q, math.inf)
        gap_below = torch.where(above > 0, q - cdf.gather(1, below), math.inf)
        picked = torch.where(gap_below <= gap_above, below, above)
    else:
        picked = above.clamp_max(last)
    # q ascends and cdf does not descend, so picked does not descend: duplicates are neighbours.
    first = torch.ones_like(picked, dtype=torch.bool)
    first[:, 1:] = picked[:, 1:] != picked[:, :-1]
    slot = torch.where(first, first.cumsum(-1) - 1, num_samples)  # duplicates go to a dropped slot
    ids = picked.new_full((picked.shape[0], num_samples + 1), -1).scatter_(1, slot, torch.where(first, picked, -1))
    ids = ids[:, :num_samples]
    return ids, ids >= 0, first.sum(-1)
