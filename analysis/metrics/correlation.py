"""Rank correlation of a similarity metric with the difference in model performance (SPEC §9.6).

Over the model pairs of one group, :func:`correlate` relates each pair's metric value to its performance
difference Acc(A) − Acc(B) with Spearman's ρ and Kendall's τ-b (SciPy) and their two-sided p-values. Pairs where
either value is NaN are dropped; n is the number of pairs left. With fewer than :data:`MIN_PAIRS` pairs, or a
constant column (a rank correlation is undefined), the statistics and p-values are NaN rather than an error, and
:func:`undefined` says why (for figure titles and table cells: "ρ undefined: 2 pairs, needs 3").
"""

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

MIN_PAIRS = 3
"""The fewest pairs a correlation is computed on."""


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's ρ and its two-sided p-value (SciPy's t approximation).

    Args:
        x, y: [n] paired values, finite or ±inf, neither constant, n ≥ 3.
    """
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def kendall(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall's τ-b and its two-sided p-value (SciPy: exact for small n without ties).

    Args:
        x, y: [n] paired values, finite or ±inf, neither constant, n ≥ 3.
    """
    result = stats.kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


CORRELATIONS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, float]]] = {
    "spearman": spearman,
    "kendall": kendall,
}
"""Name → correlation(x [n], y [n]) -> (statistic, p-value)."""


def _pairs(metric_values: ArrayLike, performance_differences: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where neither value is NaN, as two float64 arrays [n]."""
    x = np.asarray(metric_values, dtype=np.float64)
    y = np.asarray(performance_differences, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"expected one metric value per performance difference (two 1-D arrays of one length), got shapes "
            f"{x.shape} and {y.shape}"
        )
    both = ~(np.isnan(x) | np.isnan(y))
    return x[both], y[both]


def undefined(metric_values: ArrayLike, performance_differences: ArrayLike) -> str:
    """Why no rank correlation exists between these pairs, e.g. "2 pairs, needs 3"; "" when it is defined.

    Args:
        metric_values, performance_differences: [m] as for :func:`correlate` (NaN pairs dropped).
    """
    x, y = _pairs(metric_values, performance_differences)
    if x.size < MIN_PAIRS:
        return f"{x.size} pair{'s' * (x.size != 1)}, needs {MIN_PAIRS}"
    if np.unique(x).size == 1:
        return "the metric is constant"
    if np.unique(y).size == 1:
        return "the score difference is constant"
    return ""


def correlate(metric_values: ArrayLike, performance_differences: ArrayLike) -> dict[str, float]:
    """Every correlation of :data:`CORRELATIONS` between a metric and the performance difference over pairs.

    Args:
        metric_values: [m] the metric of each model pair (NaN where missing).
        performance_differences: [m] Acc(A) − Acc(B) of the same pairs (NaN where missing).

    Returns:
        {"spearman", "spearman_p", "kendall", "kendall_p": float (NaN when undefined), "n": int pairs used}.
    """
    x, y = _pairs(metric_values, performance_differences)
    defined = not undefined(x, y)
    result: dict[str, float] = {}
    for name, correlation in CORRELATIONS.items():
        result[name], result[f"{name}_p"] = correlation(x, y) if defined else (math.nan, math.nan)
    result["n"] = int(x.size)
    return result
