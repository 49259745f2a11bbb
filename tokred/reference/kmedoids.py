"""K-Medoids clustering of tokens (SPEC §3.7), in plain PyTorch."""

import torch
from torch import Tensor

from tokred.reference.distance import accumulation_dtype, pairwise_distance

KMEDOIDS_RULES = ("paper", "medoid")


def nearest_medoid(dist: Tensor, medoids: Tensor) -> Tensor:
    """Index [B, N] of the nearest medoid (lowest on ties) from distances [B, N, N] and medoids [B, K]."""
    return dist.gather(2, medoids[:, None, :].expand(-1, dist.shape[1], -1)).argmin(-1)


def kmedoids(
    x: Tensor, weights: Tensor, num_clusters: int, iters: int = 3, rule: str = "paper"
) -> tuple[Tensor, Tensor]:
    """Cluster tokens with K-Medoids started from the K heaviest tokens.

    Each iteration assigns every token to its nearest medoid, then moves each medoid to the member
    with the lowest cost. The study's cost ("paper") is w_i · Σ_j D_ij over all tokens, which never
    changes between iterations; the textbook medoid cost ("medoid") is Σ_j D_ij over the cluster's own
    members. An empty cluster (possible only with duplicated tokens) keeps its medoid.

    Args:
        x: [B, N, C] tokens.
        weights: [B, N] token weights; the initial medoids are the K heaviest (lower index on ties).
        num_clusters: K, 1 ≤ K ≤ N.
        iters: T ≥ 0 update iterations.
        rule: "paper" or "medoid".

    Returns:
        medoids: [B, K] int64 token indices, in the order of the initial weights.
        assignment: [B, N] int64 nearest medoid of each token.
    """
    dist = pairwise_distance(x)  # [B, N, N]
    w = weights.to(accumulation_dtype(x.dtype))
    medoids = torch.sort(w, dim=-1, descending=True, stable=True).indices[:, :num_clusters]
    clusters = torch.arange(num_clusters, device=x.device)[None, :, None]
    cost = w * dist.sum(-1)  # [B, N], the paper's cost: iteration-invariant
    for _ in range(iters):
        assignment = nearest_medoid(dist, medoids)
        if rule == "medoid":
            same_cluster = assignment[:, :, None] == assignment[:, None, :]
            cost = torch.where(same_cluster, dist, 0.0).sum(-1)
        member = assignment[:, None, :] == clusters  # [B, K, N]
        best = torch.where(member, cost[:, None, :], torch.inf).argmin(-1)
        medoids = torch.where(member.any(-1), best, medoids)
    return medoids, nearest_medoid(dist, medoids)
