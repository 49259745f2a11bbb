"""The CPU emulation of the CUDA kernels: each emulated kernel against the CPU kernel, the emulator's shuffles
against CUDA's definitions, its errors for faulty kernels, and the kernel swap of the cuda_emulation device."""

import pytest
import torch

from tokred.emulation import emulated_cuda_kernels

from helpers import FLOAT_DTYPES, assert_same_clustering, randn, scores_with_spreads

pytestmark = pytest.mark.cuda_emulation

emulated, cpu = torch.ops.tokred_emu, torch.ops.tokred


def assert_equal(got: tuple, want: tuple) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)


# ------------------------------------------------------------------------- emulated CUDA kernels vs CPU kernels


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rule", ["nearest", "inverse"])
def test_ats_sample(cpu_rng, dtype, rule):
    """Identical in every dtype: both sum the CDF in float64 in one order. N = 4000 needs 48 KB of scratch, more than
    the kernel takes from shared memory: a global workspace."""
    for batch, n, k in [(9, 196, 98), (2, 33, 40), (2, 4000, 300)]:
        scores = torch.rand(batch, n, generator=cpu_rng, dtype=torch.float64).pow(3).to(dtype)
        mask = torch.rand(batch, n, generator=cpu_rng) > 0.3
        assert_equal(emulated.ats_sample(scores, mask, k, rule), cpu.ats_sample(scores, mask, k, rule))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_ats_sample_signed_zeros_and_nans(cpu_rng, dtype):
    """A score with its sign bit set has mass 0 (-0 and -NaN too, as x86 makes NaN), in every dtype."""
    scores = torch.rand(6, 50, generator=cpu_rng, dtype=torch.float64).to(dtype)
    scores[:, ::3] = -0.0
    scores[:, 1::7] = float("nan")
    bits = scores.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[scores.element_size()])
    bits[:, 1::7] |= torch.iinfo(bits.dtype).min  # the sign bit (bfloat16 makes every NaN +NaN)
    assert torch.signbit(scores[:, ::3]).all() and torch.signbit(scores[:, 1::7]).all()
    mask = torch.rand(6, 50, generator=cpu_rng) > 0.2
    for rule in ("nearest", "inverse"):
        assert_equal(emulated.ats_sample(scores, mask, 20, rule), cpu.ats_sample(scores, mask, 20, rule))


def test_ats_sample_sums_in_the_cpu_order():
    """The total of these masses in the CPU's order (16 interleaved partial sums) and in token order differ by an ulp,
    and a CDF value falls between the two normalisations' on the first quantile, 1/12: the picks tell the orders
    apart."""
    masses = [(j * 0.7548776662466927) % 1.0 for j in range(36)] + [float.fromhex("0x1.69c2f6844c07fp+3")]
    scores, mask = torch.tensor([masses], dtype=torch.float64), torch.ones(1, 37, dtype=torch.bool)
    want = cpu.ats_sample(scores, mask, 5, "inverse")
    assert_equal(emulated.ats_sample(scores, mask, 5, "inverse"), want)
    total = 0.0
    for m in masses:  # in token order
        total += m
    cdf, running = [], 0.0
    for m in masses:
        running += m / (total + 1e-6)
        cdf.append(running)
    first = next(j for j, c in enumerate(cdf) if c >= 1 / 12)
    assert first != want[0][0, 0]


def test_dpc_knn(cpu_rng):
    x = randn((5, 196, 32), torch.float64, torch.device("cpu"), cpu_rng)
    mask = torch.rand(5, 196, generator=cpu_rng) > 0.2
    noise = 1e-6 * torch.rand(5, 196, generator=cpu_rng, dtype=torch.float64)
    for k, k_neighbors, m, z in [(49, 5, None, None), (20, 1, mask, None), (196, 30, None, noise), (1, 5, mask, noise)]:
        assert_equal(emulated.dpc_knn(x, k, k_neighbors, m, z), cpu.dpc_knn(x, k, k_neighbors, m, z))
    x32 = x.float()
    assert_same_clustering(x32, emulated.dpc_knn(x32, 49, 5, None, None), cpu.dpc_knn(x32, 49, 5, None, None), False)


@pytest.mark.parametrize("rule", ["paper", "medoid"])
def test_kmedoids(cpu_rng, rule):
    x = randn((5, 196, 32), torch.float64, torch.device("cpu"), cpu_rng)
    weights = torch.rand(5, 196, generator=cpu_rng, dtype=torch.float64)
    for k, iters in [(49, 3), (1, 2), (196, 1), (20, 0)]:
        assert_equal(emulated.kmedoids(x, weights, k, iters, rule), cpu.kmedoids(x, weights, k, iters, rule))
    x32, w32 = x.float(), weights.float()
    got, want = emulated.kmedoids(x32, w32, 49, 3, rule), cpu.kmedoids(x32, w32, 49, 3, rule)
    assert_same_clustering(x32, got, want, exact=False)


@pytest.mark.parametrize("marginals", ["paper", "balanced"])
def test_sinkhorn(cpu_rng, marginals):
    """Plan and histories as the CPU's to rounding: the scaling domain in the CPU's order, where only the compilers'
    choice of fused multiply-adds differs (and in float32 CUDA's exp and log, the CPU's polynomials)."""
    for dtype, tol in [(torch.float64, 1e-13), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)]:
        scores = randn((4, 49, 196), dtype, torch.device("cpu"), cpu_rng)
        got, want = emulated.sinkhorn(scores, 0.5, 4, marginals), cpu.sinkhorn(scores, 0.5, 4, marginals)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("marginals", ["paper", "balanced"])
def test_sinkhorn_scaling_and_log_domain_images_in_one_batch(cpu_rng, dtype, marginals):
    """Every image takes the CPU's domain, by the spread of z = scores / eps (the scaling domain up to 40 in float32,
    300 in float64). z near 1e3 (float32) or 1e6 (float64) tells the domains apart: the log domain carries the rounding
    of z, ulp(z), into the plan and the histories, the scaling domain does not. So the scaling images, the same
    algorithm summed in the same order, agree to 16 ulps in the plan and a fraction of ulp(z) in the histories; the log
    images, where the CPU's and the CUDA kernel's log-domain algorithms differ, to a few ulp(z) in the plan and tens
    of ulp(z) in the histories."""
    if dtype == torch.float32:
        spreads, offset, limit = [0.5, 5.0, 39.0, 41.0, 120.0], 1e3, 40.0
    else:
        spreads, offset, limit = [0.5, 30.0, 290.0, 310.0, 1000.0], 1e6, 300.0
    ulp = torch.finfo(dtype).eps
    for eps, iters in [(1.0, 3), (0.05, 20)]:
        spread_scores = scores_with_spreads(spreads, 24, 61, eps, torch.float64, torch.device("cpu"), cpu_rng)
        scores = (offset * eps + spread_scores).to(dtype)
        plan, u, v = emulated.sinkhorn(scores, eps, iters, marginals)
        want_plan, want_u, want_v = cpu.sinkhorn(scores, eps, iters, marginals)
        for i, spread in enumerate(spreads):
            z_ulp = ulp * (offset + spread)  # |z| <= offset + spread
            plan_tol, history_tol = (16 * ulp, 4 * z_ulp) if spread <= limit else (4 * z_ulp, 64 * z_ulp)
            msg = f"spread {spread}, eps {eps}"
            torch.testing.assert_close(plan[i], want_plan[i], rtol=plan_tol, atol=plan_tol, msg=msg)
            torch.testing.assert_close(u[i], want_u[i], rtol=0, atol=history_tol, msg=msg)
            torch.testing.assert_close(v[i], want_v[i], rtol=0, atol=history_tol, msg=msg)


@pytest.mark.parametrize("marginals", ["paper", "balanced"])
def test_sinkhorn_backward(cpu_rng, marginals):
    """Also with T (N + K) beyond shared memory (T = 20, N = 300: a global workspace)."""
    for k, n, iters in [(12, 40, 3), (7, 300, 20)]:
        scores = randn((3, k, n), torch.float64, torch.device("cpu"), cpu_rng)
        _, u, v = cpu.sinkhorn(scores, 0.7, iters, marginals)
        grad = torch.randn(3, k, n, generator=cpu_rng, dtype=torch.float64)
        torch.testing.assert_close(
            emulated.sinkhorn_backward(grad, scores, u, v, 0.7, marginals),
            cpu.sinkhorn_backward(grad, scores, u, v, 0.7, marginals),
            rtol=1e-12,
            atol=1e-12,
        )


# ------------------------------------------------------------------------------------------- the emulator


def cuda_source_lane(intrinsic: str, lane: int, b: int, width: int) -> int:
    """The lane whose value ``lane`` gets, in the words of the CUDA C++ Programming Guide (warp shuffle functions)."""
    start = lane // width * width  # lanes form groups of `width`
    if intrinsic == "__shfl_sync":  # srcLane, taken modulo width, within the group
        return start + b % width
    if intrinsic == "__shfl_up_sync":  # lane - delta, unless that leaves the group below
        return lane - b if lane - b >= start else lane
    if intrinsic == "__shfl_down_sync":  # lane + delta, unless that leaves the group above
        return lane + b if lane + b < start + width else lane
    # xor: groups may read earlier groups, but a later group gives the own value
    return lane ^ b if lane ^ b < start + width else lane


@pytest.mark.parametrize("width", [32, 16, 8, 2, 1])
@pytest.mark.parametrize("intrinsic", ["__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"])
def test_shuffles(intrinsic, width):
    """Two warps of 64 threads shuffle their thread index as an int and as a double."""
    for b in [0, 1, 3, 5, 8, 16, 31, 37]:
        got = emulated.test_shuffle(intrinsic, b, width)
        lanes = [32 * (t // 32) + cuda_source_lane(intrinsic, t % 32, b, width) for t in range(64)]
        want = torch.tensor([lanes, lanes])
        assert torch.equal(got, want), (intrinsic, b, width)


FAULTS = {
    "skipped_barrier": [  # 100 of 256 threads reach a __syncthreads()
        r"deadlock in block \(0, 0, 0\) of kernel fault_kernel \(launched at csrc/emulation/module\.cpp:\d+ with "
        r"2x1x1 blocks of 256x1x1 threads\): no thread can go on",
        r"threads 0-99: at __syncthreads\(\) \(csrc/emulation/module\.cpp:\d+\)",
        r"threads 100-255: exited",
        r"a barrier in divergent code is a bug of the kernel",
    ],
    "split_barrier": [  # odd and even threads at two different __syncthreads()
        r"divergent __syncthreads\(\) in block \(0, 0, 0\) of kernel fault_kernel",
        r"threads 0, 2, 4, .* \(128 threads\): at __syncthreads\(\) \(csrc/emulation/module\.cpp:\d+\)",
        r"threads 1, 3, 5, .* \(128 threads\): at __syncthreads\(\) \(csrc/emulation/module\.cpp:\d+\)",
    ],
    "skipped_shuffle": [  # half of each warp's lanes
        r"deadlock in block",
        r"threads 0-15, 32-47: at __shfl_xor_sync \(csrc/emulation/module\.cpp:\d+\)",
        r"threads 16-31, 48-63: exited",
    ],
    "skipped_syncwarp": [r"deadlock in block", r"threads 0, 32: exited", r"threads 1-31, 33-63: at __syncwarp\(\)"],
    "partial_mask": [r"__shfl_xor_sync with mask 0xffff at .*: only the full mask 0xffffffff is emulated"],
    "partial_warp": [r"in warp 1 in block .* the warp has 16 lanes, .* make the block's threads a multiple of 32"],
    "empty_grid": [r"invalid grid \(a GPU refuses an empty one: skip the launch when there is no work\)"],
    "too_many_threads": [r"invalid block \(1 to 1024 threads, z at most 64\) .* 2048x1x1 threads"],
    "too_much_shared_memory": [r"more than the 48 KiB of dynamic shared memory .* 65536 bytes"],
}


@pytest.mark.parametrize("case", FAULTS)
def test_faulty_kernels_are_reported(case):
    """A faulty kernel or launch raises an error that says what and where, instead of hanging; the next launch works."""
    with pytest.raises(RuntimeError, match="tokred CUDA emulation: ") as error:
        emulated.test_fault(case)
    for pattern in FAULTS[case]:
        assert error.match(pattern)
    assert torch.equal(emulated.test_shuffle("__shfl_xor_sync", 1, 32)[0], torch.arange(64) ^ 1)


# ----------------------------------------------------------------------------------------- the kernel swap


def cpu_kernel(op: str) -> str:
    return next(line for line in torch._C._dispatch_dump_table(f"tokred::{op}").splitlines() if line.startswith("CPU:"))


def test_kernels_swapped_in_and_back():
    """Within the context the CPU key of every op runs the emulated kernel; after it, the CPU kernel again."""
    ops = ["ats_sample", "dpc_knn", "kmedoids", "sinkhorn", "sinkhorn_backward"]
    before = {op: cpu_kernel(op) for op in ops}
    assert all("csrc/cpu/" in line for line in before.values()), before
    with pytest.raises(ZeroDivisionError), emulated_cuda_kernels():
        assert all("tokred/emulation.py" in cpu_kernel(op) for op in ops)
        tokens = torch.zeros(1, 1, 1).expand(1, 50_000, 1)  # N^2 > 2^31: the CUDA kernels' limit, not the CPU's
        with pytest.raises(RuntimeError, match="N \\* N = 2500000000 is too large for the CUDA kernels"):
            cpu.dpc_knn(tokens, 2, 5, None, None)
        1 / 0  # noqa: B018  (the kernels come back also when the block raises)
    assert {op: cpu_kernel(op) for op in ops} == before
