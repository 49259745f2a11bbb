"""ATS inverse-transform token sampling (SPEC §3.5), in plain PyTorch."""

import torch
from torch import Tensor

ATS_RULES = ("nearest", "inverse")


def ats_quantiles(num_samples: int, device: torch.device) -> Tensor:
    """The study's quantile grid q_i = (2i + 1) / (2 (K + 1)), i < K, in float64 [K]."""
    i = torch.arange(num_samples, device=device, dtype=torch.float64)
    return (2 * i + 1) / (2 * (num_samples + 1))


def ats_sample(
    scores: Tensor, mask: Tensor | None, num_samples: int, rule: str = "nearest"
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample tokens by inverting the CDF of their significance scores.

    Args:
        scores: [B, N] non-negative significance of each spatial token (negatives count as 0).
        mask: [B, N] bool, False for tokens that can no longer be sampled; None means all valid.
        num_samples: K, the number of quantile points (the upper bound on kept tokens).
        rule: "nearest" (the study: the token whose CDF value is closest to the quantile, first on ties)
            or "inverse" (textbook: the first token whose CDF value reaches the quantile).

    Returns:
        ids: [B, K] int64 sampled token indices, unique and ascending per image, right-padded with -1.
        new_mask: [B, K] bool, True where ``ids`` holds a token.
        counts: [B] int64, the number of distinct tokens kept per image.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    # The CDF in float64: the nearest rule compares distances, which float32 would blur into ties.
    s = torch.where(mask, scores.double().clamp_min(0), 0.0)
    cdf = torch.cumsum(s / (s.sum(-1, keepdim=True) + 1e-6), dim=-1)  # [B, N]
    q = ats_quantiles(num_samples, scores.device)  # [K]

    if rule == "nearest":
        gap = (q[:, None] - cdf[:, None, :]).abs()  # [B, K, N]
        picked = torch.where(mask[:, None, :], gap, torch.inf).argmin(-1)  # first index on ties
    else:
        reached = (cdf[:, None, :] >= q[:, None]) & mask[:, None, :]  # [B, K, N]
        last_valid = torch.where(mask, torch.arange(mask.shape[1], device=mask.device), -1).amax(-1)  # [B]
        picked = torch.where(reached.any(-1), reached.int().argmax(-1), last_valid[:, None])
    valid_image = mask.any(-1, keepdim=True)  # an image with no valid token samples nothing

    picked, _ = picked.sort(-1)
    first = torch.ones_like(picked, dtype=torch.bool)
    first[:, 1:] = picked[:, 1:] != picked[:, :-1]
    first &= valid_image
    counts = first.sum(-1)
    slot = torch.where(first, first.cumsum(-1) - 1, num_samples)  # duplicates go to a dropped slot
    ids = torch.full((scores.shape[0], num_samples + 1), -1, dtype=torch.long, device=scores.device)
    ids.scatter_(1, slot, torch.where(first, picked, -1))
    ids = ids[:, :num_samples]
    return ids, ids >= 0, counts
