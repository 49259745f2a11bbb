"""Pairwise distances shared by the clustering references."""

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating type is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pairwise_distance(x: Tensor) -> Tensor:
    """Euclidean distances [B, N, N] between the rows of x [B, N, C], from coordinate differences.

    Differences (not the |a|² + |b|² - 2ab expansion) keep the distance between equal tokens exactly 0,
    so ties between duplicated tokens stay exact ties.
    """
    x = x.to(accumulation_dtype(x.dtype))
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
