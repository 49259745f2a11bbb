"""Correlation of a metric with the performance difference: against SciPy, by hand, and on degenerate groups."""

import math
import os

import numpy as np
import pytest
from scipy import stats

from analysis.metrics.correlation import CORRELATIONS, correlate, undefined


@pytest.fixture
def gen() -> np.random.Generator:
    """Fresh random inputs on every run (the seed is printed on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return np.random.default_rng(seed)


def test_matches_scipy(gen: np.random.Generator) -> None:
    x = gen.standard_normal(12)
    y = 0.5 * x + gen.standard_normal(12)
    got = correlate(x, y)
    spearman, kendall = stats.spearmanr(x, y), stats.kendalltau(x, y)
    assert list(got) == ["spearman", "spearman_p", "kendall", "kendall_p", "n"]
    assert got["n"] == 12
    assert got["spearman"] == pytest.approx(spearman.statistic, abs=1e-14)
    assert got["spearman_p"] == pytest.approx(spearman.pvalue, abs=1e-14)
    assert got["kendall"] == pytest.approx(kendall.statistic, abs=1e-14)
    assert got["kendall_p"] == pytest.approx(kendall.pvalue, abs=1e-14)


def test_monotone_relation_by_hand() -> None:
    # Same order in both: ρ = τ = 1; Kendall's exact two-sided p for n = 5 is 2 / 5! (one of 120 orders is as
    # extreme on each side); an order reversed: ρ = τ = −1.
    metric = [0.1, 0.5, 0.7, 2.0, 9.0]
    got = correlate(metric, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert got["spearman"] == pytest.approx(1) and got["kendall"] == pytest.approx(1)
    assert got["kendall_p"] == pytest.approx(2 / 120)
    assert got["spearman_p"] == pytest.approx(0, abs=1e-12)
    reversed_ = correlate(metric, [5.0, 4.0, 3.0, 2.0, 1.0])
    assert reversed_["spearman"] == pytest.approx(-1) and reversed_["kendall"] == pytest.approx(-1)


def test_nan_pairs_are_dropped_pairwise(gen: np.random.Generator) -> None:
    x, y = gen.standard_normal(10), gen.standard_normal(10)
    x[[1, 4]] = np.nan
    y[[4, 7]] = np.nan
    keep = np.array([i not in (1, 4, 7) for i in range(10)])
    got = correlate(x, y)
    assert got["n"] == 7
    assert got["spearman"] == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic, abs=1e-14)
    assert got["kendall"] == pytest.approx(stats.kendalltau(x[keep], y[keep]).statistic, abs=1e-14)


@pytest.mark.parametrize(
    ("x", "y", "n", "why"),
    [
        ([0.3, 0.1], [1.0, 2.0], 2, "2 pairs, needs 3"),  # too few pairs
        ([0.3, np.nan, 0.2, 0.9], [1.0, 2.0, np.nan, 3.0], 2, "2 pairs, needs 3"),  # too few once NaNs are dropped
        ([0.3], [1.0], 1, "1 pair, needs 3"),
        ([], [], 0, "0 pairs, needs 3"),
        ([0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0], 4, "the metric is constant"),  # no rank correlation
        ([0.1, 0.2, 0.3], [2.0, 2.0, 2.0], 3, "the score difference is constant"),
    ],
)
def test_undefined_correlations_are_nan_with_n_and_say_why(x: list[float], y: list[float], n: int, why: str) -> None:
    got = correlate(x, y)
    assert got["n"] == n
    assert all(math.isnan(got[key]) for key in ("spearman", "spearman_p", "kendall", "kendall_p"))
    assert undefined(x, y) == why


def test_defined_correlations_have_no_reason(gen: np.random.Generator) -> None:
    assert undefined(gen.standard_normal(3), [1.0, 2.0, 3.0]) == ""


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="one metric value per performance difference"):
        correlate([0.1, 0.2, 0.3], [1.0, 2.0])


def test_table_entries_return_statistic_and_p_value(gen: np.random.Generator) -> None:
    x, y = gen.standard_normal(8), gen.standard_normal(8)
    for name, correlation in CORRELATIONS.items():
        statistic, p_value = correlation(x, y)
        assert -1 <= statistic <= 1 and 0 <= p_value <= 1, name
