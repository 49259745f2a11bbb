import math

import pytest
import torch

from tokred import ops, reference

from helpers import FLOAT_DTYPES, non_contiguous, randn, scores_with_spreads

TOLERANCE = {  # (rtol, atol) against the reference computed in the same accumulation type
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-4, 1e-6),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("marginals", ["paper", "balanced"])
@pytest.mark.parametrize("batch,k,n", [(16, 98, 196), (1, 49, 196), (3, 5, 17), (2, 1, 33), (2, 20, 20)])
def test_matches_reference(device, rng, dtype, marginals, batch, k, n):
    scores = randn((batch, k, n), dtype, device, rng)
    got = ops.sinkhorn(scores, 1.0, 3, marginals)
    want = reference.sinkhorn(scores, 1.0, 3, marginals)
    assert got.dtype == dtype and got.shape == (batch, k, n)
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("iters", [1, 2, 10])
@pytest.mark.parametrize("eps", [0.05, 1.0, 7.0])
def test_iterations_and_eps(device, rng, iters, eps):
    scores = randn((4, 12, 40), torch.float64, device, rng)
    for marginals in ("paper", "balanced"):
        torch.testing.assert_close(
            ops.sinkhorn(scores, eps, iters, marginals), reference.sinkhorn(scores, eps, iters, marginals)
        )


@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_large_magnitude_scores(device, rng, scale):
    """Scores / eps far beyond exp's range: the log domain keeps the plan finite and its columns at 1."""
    scores = scale * randn((4, 24, 60), torch.float32, device, rng)
    plan = ops.sinkhorn(scores, 0.1, 5)
    assert plan.isfinite().all()
    # float32 holds Z / eps ~ 1e4 to about 1e-3 absolute, which exp turns into a relative error
    tol = 4 * torch.finfo(torch.float32).eps * (scores / 0.1).abs().max().item()
    torch.testing.assert_close(plan.sum(1), torch.ones(4, 60, device=device), rtol=0, atol=tol)
    want = reference.sinkhorn(scores.double(), 0.1, 5).float()
    torch.testing.assert_close(plan, want, rtol=tol, atol=tol)


def test_columns_sum_to_one(device, rng):
    """After the final column update every token distributes unit mass (SPEC §13)."""
    scores = randn((8, 49, 196), torch.float64, device, rng)
    for marginals in ("paper", "balanced"):
        plan = ops.sinkhorn(scores, 1.0, 3, marginals)
        torch.testing.assert_close(plan.sum(1), torch.ones(8, 196, dtype=torch.float64, device=device))
        assert (plan > 0).all()
    # with many iterations the balanced plan's rows approach N / K each
    plan = ops.sinkhorn(scores, 1.0, 200, "balanced")
    torch.testing.assert_close(plan.sum(2), torch.full((8, 49), 196 / 49, dtype=torch.float64, device=device))


def test_one_iteration_by_hand():
    """K = 1: u and v have closed forms, and the plan is all ones (the only column-stochastic plan)."""
    scores = torch.tensor([[[0.5, -1.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(ops.sinkhorn(scores, 1.0, 1), torch.ones(1, 1, 3, dtype=torch.float64))


def spec_sinkhorn(scores: torch.Tensor, eps: float, iters: int, marginals: str) -> torch.Tensor:
    """SPEC §3.11 written out: u, v updates from 0, then the plan exp(Z/ε + u + v) times the marginals' scale."""
    k, n = scores.shape[1:]
    log_mu, log_nu, scale = (
        (-math.log(k + n), -math.log(k + n), k + n) if marginals == "paper" else (-math.log(k), -math.log(n), n)
    )
    z = scores / eps
    u, v = z.new_zeros(z.shape[:2]), z.new_zeros(z.shape[0], n)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(z + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(z + u[:, :, None], dim=1)
    return torch.exp(z + u[:, :, None] + v[:, None, :]) * scale


@pytest.mark.parametrize("marginals", ["paper", "balanced"])
def test_study_formula_at_the_study_eps(device, rng, marginals):
    """The plan, normalised per column as the last update's softmax, is the SPEC's formula to rounding."""
    scores = randn((4, 49, 196), torch.float64, device, rng)
    want = spec_sinkhorn(scores, 1.0, 3, marginals)
    torch.testing.assert_close(ops.sinkhorn(scores, 1.0, 3, marginals), want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(reference.sinkhorn(scores, 1.0, 3, marginals), want, rtol=1e-12, atol=1e-15)
    got32 = ops.sinkhorn(scores.float(), 1.0, 3, marginals)
    torch.testing.assert_close(got32, want.float(), rtol=TOLERANCE[torch.float32][0], atol=TOLERANCE[torch.float32][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [1e-6, 1e-4])
def test_columns_sum_to_one_for_tiny_eps(device, rng, dtype, eps):
    """Z/ε ~ 1e6: v (~1e6) holds its O(1) part only to ~0.06 in float32, so exp(Z/ε + u + v) drifted by ~6 %;
    the plan as a softmax over clusters keeps every column at 1 to the working precision."""
    scores = randn((4, 49, 196), dtype, device, rng)
    tol = 64 * torch.finfo(dtype).eps
    for fn in (ops.sinkhorn, reference.sinkhorn):
        for marginals in ("paper", "balanced"):
            plan = fn(scores, eps, 3, marginals)
            assert plan.isfinite().all() and (plan >= 0).all()
            torch.testing.assert_close(plan.sum(1), torch.ones(4, 196, dtype=dtype, device=device), rtol=0, atol=tol)
    if dtype == torch.float64:  # and the kernel's plan is the reference's
        torch.testing.assert_close(
            ops.sinkhorn(scores, eps, 3), reference.sinkhorn(scores, eps, 3), rtol=1e-6, atol=1e-9
        )


def test_fewer_than_one_iteration_refused(device):
    """T = 0 runs no column update, so no column would sum to 1: every entry refuses it."""
    scores = torch.randn(2, 3, 10, device=device)
    with pytest.raises(ValueError, match="iters must be >= 1, got 0"):
        ops.sinkhorn(scores, 1.0, 0)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        reference.sinkhorn(scores, 1.0, 0)
    with pytest.raises(RuntimeError, match="iters must be at least 1, got 0"):
        torch.ops.tokred.sinkhorn(scores, 1.0, 0, "paper")
    with pytest.raises(ValueError, match="iters must be >= 1, got 0"):  # the fake kernel
        torch.ops.tokred.sinkhorn(scores.to("meta"), 1.0, 0, "paper")
    u, v = scores.new_empty(2, 0, 3), scores.new_empty(2, 0, 10)  # histories of T = 0
    with pytest.raises(RuntimeError, match="iters must be at least 1"):
        torch.ops.tokred.sinkhorn_backward(scores, scores, u, v, 1.0, "paper")


def test_non_contiguous_inputs(device, rng):
    scores = randn((3, 10, 30), torch.float64, device, rng)
    torch.testing.assert_close(ops.sinkhorn(non_contiguous(scores)), reference.sinkhorn(scores))


@pytest.mark.parametrize("marginals", ["paper", "balanced"])
@pytest.mark.parametrize("iters", [1, 3])
def test_gradcheck(device, rng, marginals, iters):
    scores = randn((2, 4, 7), torch.float64, device, rng).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: ops.sinkhorn(z, 0.7, iters, marginals), (scores,))


@pytest.mark.parametrize("marginals", ["paper", "balanced"])
def test_gradgradcheck(device, rng, marginals):
    """Second-order gradients (create_graph=True) are exact: in scores and in the incoming gradient."""
    scores = randn((2, 3, 5), torch.float64, device, rng).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: ops.sinkhorn(z, 0.7, 2, marginals), (scores,))


def test_first_order_gradient_is_the_same_with_create_graph(device, rng):
    scores = randn((3, 6, 11), torch.float64, device, rng).requires_grad_()
    weights = torch.randn(3, 6, 11, generator=rng, device=device, dtype=torch.float64)
    grads = [
        torch.autograd.grad((ops.sinkhorn(scores, 0.5, 3) * weights).sum(), scores, create_graph=create_graph)[0]
        for create_graph in (False, True)
    ]
    assert not grads[0].requires_grad and grads[1].requires_grad
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gradient_matches_autograd_through_reference(device, rng, dtype):
    scores = randn((4, 20, 50), dtype, device, rng)
    weights = torch.randn(4, 20, 50, generator=rng, device=device, dtype=torch.float64).to(dtype)
    grads = []
    for fn in (ops.sinkhorn, reference.sinkhorn):
        z = scores.clone().requires_grad_()
        (fn(z, 0.5, 3, "paper") * weights).sum().backward()
        grads.append(z.grad)
    assert grads[0].dtype == dtype
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(grads[0], grads[1], rtol=rtol * 10, atol=atol * 10)


def plan_tolerance(dtype: torch.dtype, z: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) for a plan against the float64 reference: the dtype's, or what rounding z = scores / eps to the
    dtype allows (exp turns its absolute error, ~eps |z|, into a relative one), whichever is larger."""
    rtol, atol = TOLERANCE[dtype]
    return max(rtol, 4 * torch.finfo(dtype).eps * z.abs().max().item()), atol


def assert_plan_matches_reference(plan: torch.Tensor, scores: torch.Tensor, eps: float, iters: int, marginals: str):
    """Finite, columns summing to 1, and the float64 reference's plan (from the same values) to the tolerance."""
    assert plan.isfinite().all() and (plan >= 0).all()
    ones = torch.ones(plan.shape[0], plan.shape[2], dtype=plan.dtype, device=plan.device)
    torch.testing.assert_close(plan.sum(1), ones, rtol=0, atol=64 * torch.finfo(plan.dtype).eps)
    want = reference.sinkhorn(scores.double(), eps, iters, marginals)
    rtol, atol = plan_tolerance(plan.dtype, scores.double() / eps)
    torch.testing.assert_close(plan.double(), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "eps,scale,offset",
    [(0.01, 1.0, 0.0), (1.0, 100.0, 0.0), (0.01, 100.0, 0.0), (1.0, 1.0, 100.0), (0.01, 1.0, 100.0)],
    ids=["eps0.01", "scores100", "eps0.01-scores100", "offset100", "eps0.01-offset100"],
)
def test_log_domain_stability(device, rng, dtype, eps, scale, offset):
    """A tiny eps, scores of magnitude 100, or both: z = scores / eps up to ~3e4, far beyond exp's range.

    Scores near 100 with a small spread (offset) reach the same magnitudes with a small spread of z at eps = 1."""
    scores = (offset + scale * randn((6, 49, 196), torch.float64, device, rng)).to(dtype)
    for marginals in ("paper", "balanced"):
        assert_plan_matches_reference(ops.sinkhorn(scores, eps, 3, marginals), scores, eps, 3, marginals)


# Spreads max z - min z on both sides of where the kernels switch from the scaling domain to the log domain
# (40 in float32, 300 in float64), and far from them.
SPREADS = [0.5, 5.0, 30.0, 39.0, 41.0, 120.0, 290.0, 310.0, 1000.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [1.0, 0.05])
def test_scaling_and_log_domain_images_in_one_batch(device, rng, dtype, eps):
    """Each image takes the scaling or the log domain by its own spread; every plan is the reference's, whichever
    path its neighbours take, and the same as when the image is alone in its batch."""
    scores = scores_with_spreads(SPREADS, 24, 61, eps, dtype, device, rng)
    for marginals in ("paper", "balanced"):
        plan = ops.sinkhorn(scores, eps, 3, marginals)
        assert_plan_matches_reference(plan, scores, eps, 3, marginals)
        alone = torch.cat([ops.sinkhorn(scores[i : i + 1], eps, 3, marginals) for i in range(len(SPREADS))])
        torch.testing.assert_close(plan, alone, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_iterations_with_unequal_marginal_masses(device, rng, dtype):
    """The study's marginals put K / (K + N) mass on the rows and N / (K + N) on the columns, so u and v drift by
    log(K / N) per iteration: after 300 iterations by ~400, beyond float32's exp range in either domain."""
    scores = scores_with_spreads([0.5, 8.0, 35.0, 60.0], 49, 196, 1.0, dtype, device, rng)
    assert_plan_matches_reference(ops.sinkhorn(scores, 1.0, 300, "paper"), scores, 1.0, 300, "paper")


@pytest.mark.parametrize("iters", [1, 3])
def test_gradient_in_both_domains(device, rng, iters):
    """The backward runs on the forward's u, v histories, which the scaling domain takes from the logs of its
    scalings: the gradient of a batch mixing both domains is autograd's through the reference."""
    scores = scores_with_spreads(SPREADS, 6, 13, 0.5, torch.float64, device, rng)
    weights = torch.randn(scores.shape, generator=rng, device=device, dtype=torch.float64)
    grads = []
    for fn in (ops.sinkhorn, reference.sinkhorn):
        z = scores.clone().requires_grad_()
        (fn(z, 0.5, iters, "paper") * weights).sum().backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
