"""The saliency metric suite against SciPy, hand-computed cases and SPEC §13's identical-map values."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, pearsonr, spearmanr, wasserstein_distance

from analysis.metrics.heatmaps import HEATMAP_METRICS, emd, jsd, jsd_study, kl, pcc, scc, sim


@pytest.fixture
def gen(cpu_rng: torch.Generator) -> np.random.Generator:
    """A numpy generator from the OS-seeded torch generator (conftest prints the seed)."""
    return np.random.default_rng(cpu_rng.initial_seed())


def depth_map(gen: np.random.Generator, shape: tuple[int, int] = (14, 14)) -> np.ndarray:
    """A mean token-depth-like map: positive, with ties."""
    return gen.choice([3.0, 6.0, 9.0, 12.0], shape) + gen.choice([0.0, 0.5], shape)


def test_identical_maps(gen: np.random.Generator) -> None:
    x = depth_map(gen)
    want = {"KL": 0.0, "JSD": 0.0, "JSD_study": 0.0, "PCC": 1.0, "SCC": 1.0, "SIM": 1.0, "EMD": 0.0}
    assert set(HEATMAP_METRICS) == set(want)
    for name, fn in HEATMAP_METRICS.items():
        assert fn(x, x.copy()) == pytest.approx(want[name], abs=1e-12), name


def test_kl_is_the_saliency_convention(gen: np.random.Generator) -> None:
    x, y = depth_map(gen), depth_map(gen)
    assert kl(x, y) == pytest.approx(entropy(y.ravel(), x.ravel(), base=2), rel=1e-12)  # D(ŷ‖x̂)
    assert kl(2 * x, 3 * y) == pytest.approx(kl(x, y), rel=1e-12)
    # Hand case: ŷ = (1, 0), x̂ = (1/2, 1/2) → 1 · log2(2) = 1 bit; the other way x̂ has mass where ŷ has none.
    half, point = np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])
    assert kl(half, point) == 1.0
    assert kl(point, half) == math.inf


def test_jsd_is_the_jensen_shannon_divergence(gen: np.random.Generator) -> None:
    x, y = depth_map(gen), depth_map(gen)
    y[0] = 0.0
    assert jsd(x, y) == pytest.approx(jensenshannon(x.ravel(), y.ravel(), base=2) ** 2, rel=1e-10)
    assert jsd(x, y) == pytest.approx(jsd(y, x), rel=1e-12)
    assert jsd(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(1.0)  # disjoint: 1 bit


def test_jsd_study_is_the_reversed_mixture_divergence(gen: np.random.Generator) -> None:
    x, y = depth_map(gen), depth_map(gen)
    p, q = x.ravel() / x.sum(), y.ravel() / y.sum()
    m = (p + q) / 2
    want = 0.5 * entropy(m, p, base=2) + 0.5 * entropy(m, q, base=2)
    assert jsd_study(x, y) == pytest.approx(want, rel=1e-12)
    assert jsd_study(x, y) != pytest.approx(jsd(x, y), rel=1e-3)
    assert jsd_study(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == math.inf


def test_correlations_equal_scipy(gen: np.random.Generator) -> None:
    x, y = depth_map(gen), depth_map(gen)
    assert pcc(x, y) == pytest.approx(pearsonr(x.ravel(), y.ravel()).statistic, rel=1e-10, abs=1e-12)
    assert scc(x, y) == pytest.approx(spearmanr(x.ravel(), y.ravel()).statistic, rel=1e-10, abs=1e-12)
    assert pcc(x, -x) == pytest.approx(-1.0) and scc(x, np.exp(x)) == pytest.approx(1.0)
    constant = np.full((14, 14), 12.0)
    assert math.isnan(pcc(constant, x)) and math.isnan(scc(x, constant))


def test_sim_is_the_histogram_intersection(gen: np.random.Generator) -> None:
    x, y = depth_map(gen), depth_map(gen)
    tx, ty = (x - x.min()) / np.ptp(x), (y - y.min()) / np.ptp(y)
    assert sim(x, y) == pytest.approx(np.minimum(tx / tx.sum(), ty / ty.sum()).sum(), rel=1e-12)
    assert sim(np.array([[0.0, 1.0]]), np.array([[5.0, 2.0]])) == 0.0  # min-max: (0, 1) vs (1, 0)
    assert sim(np.array([[3.0, 3.0]]), np.array([[0.0, 1.0]])) == 0.5  # constant → uniform (1/2, 1/2)
    assert sim(np.full((2, 2), 3.0), np.full((2, 2), 7.0)) == 1.0


def test_emd_by_hand() -> None:
    one_corner, far_cell, split = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    one_corner[0, 0], far_cell[2, 1] = 1.0, 4.0
    split[0, 1] = split[1, 0] = 1.0
    assert emd(one_corner, far_cell) == pytest.approx(math.sqrt(5), rel=1e-12)  # (0,0) → (2,1)
    assert emd(far_cell, one_corner) == pytest.approx(math.sqrt(5), rel=1e-12)
    assert emd(one_corner, split) == pytest.approx(1.0, rel=1e-12)  # halves moved one cell each


def test_emd_on_one_row_maps_equals_the_1d_wasserstein_distance(gen: np.random.Generator) -> None:
    x, y = depth_map(gen, (1, 25)), depth_map(gen, (1, 25))
    cells = np.arange(25)
    want = wasserstein_distance(cells, cells, u_weights=x.ravel(), v_weights=y.ravel())
    assert emd(x, y) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(HEATMAP_METRICS))
def test_invalid_maps_raise(name: str) -> None:
    fn = HEATMAP_METRICS[name]
    with pytest.raises(ValueError, match="same shape"):
        fn(np.ones((14, 14)), np.ones((7, 28)))
    with pytest.raises(ValueError, match="finite"):
        fn(np.ones((2, 2)), np.array([[1.0, np.nan], [1.0, 1.0]]))
    if name in ("KL", "JSD", "JSD_study", "EMD"):
        with pytest.raises(ValueError, match="negative"):
            fn(np.ones((2, 2)), np.array([[1.0, -1.0], [1.0, 1.0]]))
        with pytest.raises(ValueError, match="sums to 0"):
            fn(np.zeros((2, 2)), np.ones((2, 2)))
