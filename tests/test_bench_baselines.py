"""bench/baselines.py computes what tokred.reference computes: the speed yardstick is the same computation.

float64 inputs, so GEMM distances differ from exact ones by rounding only (~1e-15) and random inputs have no
near-ties; the results must then be identical (Sinkhorn: equal to rounding). Exact ties (duplicated tokens) are
tested on small integers, where GEMM distances are exact too: on other duplicates the GEMM's rounding turns a
tie into a near-tie (a twin ~1e-8 away instead of 0) and the two formulations may break it differently.
"""

import pytest
import torch

from bench import baselines
from tokred import reference

from helpers import randn

SHAPES = [(4, 196, 32, 98), (1, 17, 8, 5), (3, 33, 16, 1), (2, 20, 8, 20)]


@pytest.mark.parametrize("batch,n,c,k", SHAPES)
def test_gram_distance_is_the_distance(cpu_rng, batch, n, c, k):
    x = randn((batch, n, c), torch.float64, torch.device("cpu"), cpu_rng)
    got = baselines.gram_distance(x)
    torch.testing.assert_close(got, torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist"))
    assert (got.diagonal(dim1=1, dim2=2) == 0).all()


def test_gram_floor_is_the_gram_matrix(cpu_rng):
    x = randn((3, 20, 8), torch.float32, torch.device("cpu"), cpu_rng)
    torch.testing.assert_close(baselines.gram(x, torch.empty(3, 20, 20)), x @ x.mT)


@pytest.mark.parametrize("k_neighbors", [1, 5])
@pytest.mark.parametrize("batch,n,c,k", SHAPES)
def test_dpc_knn(cpu_rng, batch, n, c, k, k_neighbors):
    x = randn((batch, n, c), torch.float64, torch.device("cpu"), cpu_rng)
    got = baselines.dpc_knn(x, k, k_neighbors)
    want = reference.dpc_knn(x, k, k_neighbors)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def twins(cpu_rng: torch.Generator, batch: int, n: int, c: int) -> torch.Tensor:
    """[B, 2n, C] small integers, every token twice: GEMM and exact distances agree exactly, ties stay ties."""
    x = torch.randint(-3, 4, (batch, n, c), generator=cpu_rng).double()
    return torch.cat([x, x], dim=1)


def test_dpc_knn_density_ties_break_by_index(cpu_rng):
    x = twins(cpu_rng, 2, 12, 4)  # every density is tied with its twin's
    got, want = baselines.dpc_knn(x, 6, 1), reference.dpc_knn(x, 6, 1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("iters", [0, 1, 3])
@pytest.mark.parametrize("batch,n,c,k", SHAPES)
def test_kmedoids(cpu_rng, batch, n, c, k, iters):
    x = randn((batch, n, c), torch.float64, torch.device("cpu"), cpu_rng)
    w = torch.rand(batch, n, generator=cpu_rng, dtype=torch.float64)
    got = baselines.kmedoids(x, w, k, iters)
    want = reference.kmedoids(x, w, k, iters)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_kmedoids_empty_cluster_keeps_its_medoid(cpu_rng):
    x = twins(cpu_rng, 2, 10, 4)  # a medoid's twin is as near, the lower index wins: clusters empty
    w = torch.rand(2, 20, generator=cpu_rng, dtype=torch.float64)
    got, want = baselines.kmedoids(x, w, 12), reference.kmedoids(x, w, 12)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("marginals", reference.SINKHORN_MARGINALS)
@pytest.mark.parametrize("eps,iters", [(1.0, 3), (0.05, 1), (0.5, 5)])
def test_sinkhorn(cpu_rng, marginals, eps, iters):
    z = randn((3, 49, 196), torch.float64, torch.device("cpu"), cpu_rng)
    got = baselines.sinkhorn(z, eps, iters, marginals)
    torch.testing.assert_close(got, reference.sinkhorn(z, eps, iters, marginals), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", reference.ATS_RULES)
@pytest.mark.parametrize("n,k", [(196, 98), (196, 176), (17, 5), (10, 30), (8, 1)])
def test_ats_sample(cpu_rng, rule, n, k):
    scores = torch.rand(6, n, generator=cpu_rng, dtype=torch.float64)
    scores[0] = 0  # an image without signal: a flat CDF
    scores[1, ::2] = 0  # runs of equal CDF values: the first index of a run is the nearest
    scores[2, -3:] = 0
    scores[3, 0] = -1  # negatives count as 0
    got = baselines.ats_sample(scores, k, rule)
    want = reference.ats_sample(scores, None, k, rule)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ats_sample_low_precision_scores(cpu_rng, dtype):
    scores = torch.rand(8, 196, generator=cpu_rng).to(dtype)
    for g, w in zip(baselines.ats_sample(scores, 98), reference.ats_sample(scores, None, 98), strict=True):
        assert torch.equal(g, w)


def test_bench_cases_time_the_same_computation_and_their_floors():
    from bench import ops as bench_ops

    def double(args: tuple) -> tuple:  # float64: GEMM and exact distances then agree beyond any near-tie
        return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    for case in bench_ops.cases(3, torch.device("cpu"), (8,), (0.25, 0.9)):
        got = getattr(baselines, case.op)(*double(case.batched_args))
        want = getattr(reference, case.op)(*double(case.args))
        if case.op == "sinkhorn":
            torch.testing.assert_close(got, want)
        else:
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), case.op
        if case.floor == "copy":
            src, dst = case.floor_args
            assert src.nbytes + dst.nbytes == case.io_bytes // 2 * 2
        else:
            x, out = case.floor_args
            assert x is case.args[0] and out.shape == (3, bench_ops.N, bench_ops.N)


def test_bench_ratios_and_table():
    from bench import ops as bench_ops

    row = bench_ops.Row("dpc_knn", "cpu", 64, 384, 98, 2.0, 6.0, "gemm", 1.0, 20.0, None, 100)
    assert row.ratios() == {"x_batched": 3.0, "x_floor": 2.0, "x_reference": 10.0, "x_compiled": None}
    header, _, line = bench_ops.table([row]).splitlines()
    cells = dict(zip(header.split("|"), line.split("|"), strict=True))
    assert cells[" × batched "].strip() == "3.00" and cells[" × floor "].strip() == "2.00"
