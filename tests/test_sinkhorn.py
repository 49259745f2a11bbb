import pytest
import torch

from tokred import ops, reference

from helpers import FLOAT_DTYPES, non_contiguous, randn

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


@pytest.mark.parametrize("iters", [0, 1, 10])
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
    # T = 0: plan = exp(Z / eps) * (K + N)
    torch.testing.assert_close(ops.sinkhorn(scores, 2.0, 0), torch.exp(scores / 2.0) * 4)


def test_non_contiguous_inputs(device, rng):
    scores = randn((3, 10, 30), torch.float64, device, rng)
    torch.testing.assert_close(ops.sinkhorn(non_contiguous(scores)), reference.sinkhorn(scores))


@pytest.mark.parametrize("marginals", ["paper", "balanced"])
@pytest.mark.parametrize("iters", [0, 1, 3])
def test_gradcheck(device, rng, marginals, iters):
    scores = randn((2, 4, 7), torch.float64, device, rng).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: ops.sinkhorn(z, 0.7, iters, marginals), (scores,))


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
