"""Evaluation metrics (SPEC §5.6)."""

import torch
from torch import Tensor


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Non-interpolated average precision per class: scores, targets [N, C] (targets 0/1) → AP [C] in [0, 1].

    AP_c = (1 / n⁺_c) Σ over the positives of class c of the precision at their rank, ranks by descending
    score (ties in sample order); a class without positives has AP 0, as in the study.
    """
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be [N, C]")
    order = scores.double().argsort(dim=0, descending=True, stable=True)
    hits = (targets.gather(0, order) > 0.5).double()
    ranks = torch.arange(1, len(scores) + 1, dtype=torch.float64, device=scores.device)[:, None]
    precision = hits.cumsum(0) / ranks
    return (precision * hits).sum(0) / (hits.sum(0) + 1e-8)


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """mAP (%) over classes of :func:`average_precision`."""
    return 100 * average_precision(scores, targets).mean().item()
