"""DPC-KNN density-peak clustering (SPEC §3.8), in plain PyTorch."""

import math

import torch
from torch import Tensor

from tokred.reference.distance import pairwise_distance


def dpc_knn(
    x: Tensor, num_clusters: int, k_neighbors: int = 5, mask: Tensor | None = None, noise: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cluster tokens around density peaks.

    Distances are Euclidean over √C. A token's density is exp(-mean squared distance to its k nearest
    valid tokens, itself included), plus ``noise`` when given. Ties in density are broken by index
    (the lower index counts as denser), so exactly one token per image has no denser token. Its
    parent distance is the largest distance in the image; every other token's is the distance to its
    nearest denser token. The K tokens with the largest density × parent distance are the centres
    (ties: lower index first); every token joins its nearest centre (ties: lower centre) and each
    centre joins itself.

    Args:
        x: [B, N, C] tokens.
        num_clusters: K, 1 ≤ K ≤ N.
        k_neighbors: neighbours in the density estimate.
        mask: optional [B, N] bool, False for tokens to ignore (never neighbours, parents or centres
            while valid ones remain; their assignment is -1).
        noise: optional [B, N] added to the densities (the study's random tie-break).

    Returns:
        centres: [B, K] int64 token indices in descending score order.
        assignment: [B, N] int64 cluster of each token in [0, K), -1 for masked tokens.
    """
    batch, n, channels = x.shape
    valid = torch.ones(batch, n, dtype=torch.bool, device=x.device) if mask is None else mask
    dist = pairwise_distance(x) / math.sqrt(channels)  # [B, N, N]
    pair_valid = valid[:, :, None] & valid[:, None, :]

    nearest = torch.where(valid[:, None, :], dist, torch.inf).topk(min(k_neighbors, n), dim=-1, largest=False).values
    found = nearest.isfinite()
    mean_sq = torch.where(found, nearest, 0.0).square().sum(-1) / found.sum(-1).clamp_min(1)
    density = torch.exp(-mean_sq)  # [B, N]
    if noise is not None:
        density = density + noise.to(density.dtype)

    index = torch.arange(n, device=x.device)
    rho_i, rho_j = density[:, :, None], density[:, None, :]
    denser = (rho_j > rho_i) | ((rho_j == rho_i) & (index[None, :] < index[:, None]))  # [B, i, j]: j denser
    parent_dist = torch.where(denser & pair_valid, dist, torch.inf).amin(-1)
    image_max = torch.where(pair_valid, dist, -torch.inf).flatten(1).amax(-1)  # [B]
    parent_dist = torch.where(parent_dist.isinf(), image_max[:, None], parent_dist)

    score = torch.where(valid, density * parent_dist, -torch.inf)
    centres = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :num_clusters]  # [B, K]

    to_centre = dist.gather(1, centres[:, :, None].expand(-1, -1, n))  # [B, K, N]
    assignment = to_centre.argmin(1)
    assignment.scatter_(1, centres, torch.arange(num_clusters, device=x.device).expand(batch, -1))
    return centres, torch.where(valid, assignment, -1)
