"""Reduction-pattern metrics against naive set loops, a from-scratch entropy formula and SPEC §13's invariants."""

import math
import statistics
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import homogeneity_completeness_v_measure

from analysis.metrics.patterns import (
    MERGING_METRICS,
    PRUNING_METRICS,
    homogeneity_completeness_v,
    ioa,
    iou,
    keep_rates,
    mean_depth_map,
    pruning_lower_bounds,
    token_depth,
    token_depth_from_kept,
)

P = 196
K_R07 = (137, 96, 67)  # SPEC §0.1: floor(196 · 0.7^s)


@pytest.fixture
def gen(cpu_rng: torch.Generator) -> np.random.Generator:
    """A numpy generator from the OS-seeded torch generator (conftest prints the seed)."""
    return np.random.default_rng(cpu_rng.initial_seed())


def pad(rows: list[list[int]], gen: np.random.Generator, extra: int = 3) -> np.ndarray:
    """[N, M] with each row's patches shuffled among -1 padding at random positions."""
    width = max(map(len, rows), default=0) + extra
    out = np.full((len(rows), width), -1)
    for out_row, row in zip(out, rows, strict=True):
        out_row[gen.permutation(width)[: len(row)]] = row
    return out


def random_sets(gen: np.random.Generator, n: int) -> list[list[int]]:
    """n random subsets of the patches, sizes 0..P (the first empty, the second full)."""
    sizes = [0, P, *gen.integers(0, P + 1, n - 2)]
    return [gen.choice(P, size, replace=False).tolist() for size in sizes]


def naive_overlap(a: list[list[int]], b: list[list[int]]) -> tuple[list[float], list[float]]:
    ious, ioas = [], []
    for row_a, row_b in zip(a, b, strict=True):
        set_a, set_b = set(row_a), set(row_b)
        inter = len(set_a & set_b)
        ious.append(inter / len(set_a | set_b) if inter else 0.0)
        ioas.append(inter / len(set_b) if inter else 0.0)
    return ious, ioas


def test_iou_and_ioa_equal_naive_set_loops(gen: np.random.Generator) -> None:
    a, b = random_sets(gen, 40), random_sets(gen, 40)
    b[5] = a[5][: len(a[5]) // 2]  # nested
    want_iou, want_ioa = naive_overlap(a, b)
    np.testing.assert_allclose(iou(pad(a, gen), pad(b, gen)), want_iou, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ioa(pad(a, gen), pad(b, gen)), want_ioa, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(iou(pad(b, gen), pad(a, gen)), iou(pad(a, gen), pad(b, gen)))


def test_iou_of_a_set_with_itself_is_1_and_ioa_of_a_subset_is_1(gen: np.random.Generator) -> None:
    sets = [s for s in random_sets(gen, 20) if s]
    subsets = [s[: gen.integers(1, len(s) + 1)] for s in sets]
    for fn in PRUNING_METRICS.values():
        np.testing.assert_array_equal(fn(pad(sets, gen), pad(sets, gen)), 1.0)
    np.testing.assert_array_equal(ioa(pad(sets, gen), pad(subsets, gen)), 1.0)
    np.testing.assert_array_equal(iou(np.full((2, 4), -1), np.full((2, 1), -1)), 0.0)  # both empty


def lp_pattern(norm: str, count: int, grid: int = 14) -> list[int]:
    """The ℓ1 / ℓ∞ disc around the grid centre with exactly ``count`` cells, by a loop over the cells."""
    centre = (grid - 1) / 2
    dist = {}
    for i in range(grid):
        for j in range(grid):
            di, dj = abs(i - centre), abs(j - centre)
            dist[i * grid + j] = di + dj if norm == "l1" else max(di, dj)
    radius = sorted(dist.values())[count - 1]
    cells = [p for p, d in dist.items() if d <= radius]
    assert len(cells) == count, "not a shell size"
    return cells


def test_iou_against_fixed_lp_patterns(gen: np.random.Generator) -> None:
    diamond, square, square144 = lp_pattern("l1", 12), lp_pattern("linf", 16), lp_pattern("linf", 144)
    # Hand values: the ℓ1 12-cell diamond lies inside the ℓ∞ 4×4 square; the 12×12 square in the full grid.
    assert iou(np.array([diamond]), np.array([square]))[0] == 12 / 16
    assert ioa(np.array([square]), np.array([diamond]))[0] == 1.0
    assert iou(np.array([square144]), np.arange(P)[None])[0] == 144 / 196
    # A shared pattern (one row) against per-image learned patterns.
    learned = random_sets(gen, 30)
    want_iou, want_ioa = naive_overlap(learned, [square144] * len(learned))
    np.testing.assert_allclose(iou(pad(learned, gen), np.array([square144])), want_iou, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ioa(pad(learned, gen), np.array([square144])), want_ioa, rtol=0, atol=1e-15)


def test_pruning_lower_bounds_by_hand() -> None:
    lb_ioa, lb_iou = pruning_lower_bounds(0.9, 0.9)  # P1 = P2 = 176 at stage 1: at least 156 shared
    assert lb_ioa[0] == 156 / 176 and lb_iou[0] == 156 / 196
    # r = 0.9 keeps 176/158/142, r = 0.5 keeps 98/49/24 (SPEC §0.1): I_min = 78, 11, 0.
    lb_ioa, lb_iou = pruning_lower_bounds(0.9, 0.5)
    np.testing.assert_allclose(lb_ioa, [78 / 98, 11 / 49, 0.0], rtol=1e-15)
    np.testing.assert_allclose(lb_iou, [78 / 196, 11 / 196, 0.0], rtol=1e-15)
    with pytest.raises(ValueError, match="higher keep rate first"):
        pruning_lower_bounds(0.5, 0.9)


@pytest.mark.parametrize(("r1", "r2"), [(0.9, 0.9), (0.9, 0.7), (0.7, 0.5), (0.5, 0.25)])
def test_pruning_lower_bounds_hold_and_are_attained(r1: float, r2: float, gen: np.random.Generator) -> None:
    counts = {0.9: (176, 158, 142), 0.7: K_R07, 0.5: (98, 49, 24), 0.25: (49, 12, 3)}
    lb_ioa, lb_iou = pruning_lower_bounds(r1, r2)
    for s, (p1, p2) in enumerate(zip(counts[r1], counts[r2], strict=True)):
        a = np.stack([gen.choice(P, p1, replace=False) for _ in range(50)])
        b = np.stack([gen.choice(P, p2, replace=False) for _ in range(50)])
        assert (ioa(a, b) >= lb_ioa[s] - 1e-12).all() and (iou(a, b) >= lb_iou[s] - 1e-12).all()
        first, last = np.arange(p1)[None], np.arange(P - p2, P)[None]  # the least overlap possible
        assert ioa(first, last)[0] == pytest.approx(lb_ioa[s], abs=1e-15)
        assert iou(first, last)[0] == pytest.approx(lb_iou[s], abs=1e-15)


def entropy_hcv(true: list[int], pred: list[int]) -> tuple[float, float, float]:
    """SPEC §9.2 from scratch: h = 1 - H(C|K)/H(C) with C = labels_true, K = labels_pred; c swaps the roles."""
    n = len(true)

    def entropy(labels: list[int]) -> float:
        return -sum(k / n * math.log(k / n) for k in Counter(labels).values())

    def conditional(c: list[int], k: list[int]) -> float:
        n_k = Counter(k)
        return -sum(n_ck / n * math.log(n_ck / n_k[kk]) for (_, kk), n_ck in Counter(zip(c, k, strict=True)).items())

    h = 1.0 if entropy(true) == 0 else 1 - conditional(true, pred) / entropy(true)
    c = 1.0 if entropy(pred) == 0 else 1 - conditional(pred, true) / entropy(pred)
    return h, c, 0.0 if h + c == 0 else 2 * h * c / (h + c)


def random_partitions(gen: np.random.Generator, n: int) -> np.ndarray:
    """[n, P] labels with 1..P clusters per image."""
    return np.stack([gen.integers(0, gen.integers(1, P + 1), P) for _ in range(n)])


def test_homogeneity_completeness_v_equal_the_entropy_formulas(gen: np.random.Generator) -> None:
    true, pred = random_partitions(gen, 12), random_partitions(gen, 12)
    true[0] = 7  # constant labels_true: h = 1
    got = np.stack(homogeneity_completeness_v(true, pred), axis=1)
    want = [entropy_hcv(t.tolist(), p.tolist()) for t, p in zip(true, pred, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[0, 0] == 1.0
    by_sklearn = [homogeneity_completeness_v_measure(t, p) for t, p in zip(true, pred, strict=True)]
    np.testing.assert_allclose(got, by_sklearn, rtol=1e-9, atol=1e-12)


def test_nested_partitions_are_homogeneous_and_v_is_symmetric(gen: np.random.Generator) -> None:
    fine = random_partitions(gen, 10)
    coarse = fine % gen.integers(1, 20, (10, 1))  # each fine cluster lies inside one coarse class
    (fn,) = MERGING_METRICS.values()
    h, c, v = fn(coarse, fine)
    np.testing.assert_allclose(h, 1.0, rtol=0, atol=1e-12)
    h_swapped, c_swapped, v_swapped = fn(fine, coarse)
    np.testing.assert_allclose(c_swapped, h, rtol=1e-12)
    np.testing.assert_allclose(h_swapped, c, rtol=1e-12)
    np.testing.assert_allclose(v_swapped, v, rtol=1e-12)


def test_homogeneity_rejects_dropped_patches() -> None:
    labels = np.zeros((2, P), dtype=np.int64)
    dropped = labels.copy()
    dropped[1, 3] = -1
    with pytest.raises(ValueError, match="-1"):
        homogeneity_completeness_v(labels, dropped)
    with pytest.raises(ValueError, match="same shape"):
        homogeneity_completeness_v(labels, labels[:, :-1])


def nested_pruning(gen: np.random.Generator, n: int, counts: tuple[int, ...]) -> list[list[list[int]]]:
    """Per stage, per image, the kept patches of a fixed-count pruning (each stage a subset of the last)."""
    stages: list[list[list[int]]] = []
    previous = [list(range(P))] * n
    for count in counts:
        previous = [gen.choice(row, count, replace=False).tolist() for row in previous]
        stages.append(previous)
    return stages


def naive_depth(stages: list[list[list[int]]], blocks: list[int], n: int) -> np.ndarray:
    depth = np.full((n, P), 12)
    for image in range(n):
        for p in range(P):
            for block, kept in zip(blocks, stages, strict=True):
                if p not in kept[image]:
                    depth[image, p] = block
                    break
    return depth


def as_assignment(kept: list[list[int]]) -> np.ndarray:
    """[N, P]: each kept patch's token id (its position in the kept list), -1 for the others."""
    out = np.full((len(kept), P), -1)
    for row, patches in zip(out, kept, strict=True):
        row[patches] = np.arange(len(patches))
    return out


def test_token_depth_of_fixed_count_pruning(gen: np.random.Generator) -> None:
    n, blocks = 8, [3, 6, 9]
    stages = nested_pruning(gen, n, K_R07)
    from_kept = token_depth_from_kept([pad(s, gen) for s in stages], blocks)
    from_assignment = token_depth(list(map(as_assignment, stages)), np.array(blocks))  # numpy ints too
    np.testing.assert_array_equal(from_kept, naive_depth(stages, blocks, n))
    np.testing.assert_array_equal(from_assignment, from_kept)
    k1, k2, k3 = K_R07
    for row in from_kept:
        assert Counter(row.tolist()) == {3: P - k1, 6: k1 - k2, 9: k2 - k3, 12: k3}


def test_token_depth_of_ragged_kept_sets(gen: np.random.Generator) -> None:
    """ATS-like: per-image counts under the stage targets, -1 padding, first absence wins."""
    n, blocks = 10, [2, 5, 8, 10]
    stages = [[gen.choice(P, gen.integers(0, P + 1), replace=False).tolist() for _ in range(n)] for _ in blocks]
    got = token_depth_from_kept([pad(s, gen) for s in stages], blocks)
    np.testing.assert_array_equal(got, naive_depth(stages, blocks, n))


def test_token_depth_without_stages_is_the_full_depth() -> None:
    np.testing.assert_array_equal(token_depth([], [], num_images=5), np.full((5, P), 12))
    np.testing.assert_array_equal(token_depth_from_kept([], [], patches=16, depth=24, num_images=2), 24)
    with pytest.raises(ValueError, match="num_images"):
        token_depth([], [])


def test_token_depth_rejects_inconsistent_stages() -> None:
    kept = np.zeros((2, 5), dtype=np.int64)
    with pytest.raises(ValueError, match="strictly increasing"):
        token_depth_from_kept([kept, kept], [6, 3])
    with pytest.raises(ValueError, match="block indices"):
        token_depth_from_kept([kept], [3, 6])
    with pytest.raises(ValueError, match="same images"):
        token_depth_from_kept([kept, kept[:1]], [3, 6])
    with pytest.raises(ValueError, match=r"\[N, 196\]"):
        token_depth([np.zeros((2, 100), dtype=np.int64)], [3])


def test_mean_depth_map_and_keep_rates_equal_per_cell_statistics(gen: np.random.Generator) -> None:
    depth = gen.choice([3, 6, 9, 12], (7, P))
    mean, std = mean_depth_map(depth)
    for i, j in [(0, 0), (0, 13), (5, 9), (13, 0), (13, 13)]:
        column = depth[:, 14 * i + j].tolist()
        assert mean[i, j] == pytest.approx(statistics.mean(column), rel=1e-14)
        assert std[i, j] == pytest.approx(statistics.pstdev(column), rel=1e-12, abs=1e-14)
    counts = gen.integers(0, P + 1, (9, 3))
    mean, std = keep_rates(counts)
    for s in range(3):
        rates = [c / P for c in counts[:, s].tolist()]
        assert mean[s] == pytest.approx(statistics.mean(rates), rel=1e-14)
        assert std[s] == pytest.approx(statistics.pstdev(rates), rel=1e-12, abs=1e-14)
    with pytest.raises(ValueError, match="14x14"):
        mean_depth_map(depth[:, :100])
