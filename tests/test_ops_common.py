"""What every operator shares: registration, opcheck, torch.compile, the reference fallback, input errors."""

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._pytree import tree_leaves

from tokred import ops


def sample_calls(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, tuple]:
    """One argument tuple per torch.ops.tokred operator."""
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(3, 20, 8, generator=g, device=device, dtype=dtype)
    scores = torch.rand(3, 20, generator=g, device=device, dtype=dtype)
    mask = torch.rand(3, 20, generator=g, device=device) > 0.2
    z = torch.randn(3, 5, 20, generator=g, device=device, dtype=dtype)
    _, u, v = torch.ops.tokred.sinkhorn(z, 1.0, 2, "paper")
    return {
        "ats_sample": (scores, mask, 7, "nearest"),
        "dpc_knn": (x, 6, 5, mask, None),
        "kmedoids": (x, scores, 6, 3, "paper"),
        "sinkhorn": (z.clone().requires_grad_(dtype.is_floating_point), 1.0, 2, "balanced"),
        "sinkhorn_backward": (torch.randn_like(z), z, u, v, 1.0, "paper"),
    }


def test_all_ops_registered():
    assert ops.EXTENSION_ERROR is None, f"tokred._C did not load: {ops.EXTENSION_ERROR}"
    assert ops.registered_ops() == [f"tokred::{name}" for name in ops.OPS]
    for name in ops.OPS:
        assert ops.has_kernel(name, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ops.OPS)
def test_opcheck(device, dtype, name):
    args = sample_calls(device, dtype)[name]
    torch.library.opcheck(getattr(torch.ops.tokred, name).default, args)


def test_cuda_kernels_registered():
    """A CUDA build carries every CUDA kernel; checked where a GPU is visible or the build had to include CUDA."""
    if not (torch.cuda.is_available() or os.environ.get("TOKRED_REQUIRE_CUDA") == "1"):
        pytest.skip("needs a CUDA device or a TOKRED_REQUIRE_CUDA=1 build")
    for name in ops.OPS:
        assert ops.has_kernel(name, torch.device("cuda")), name


def test_torch_compile(device):
    """Every op traces into one graph through its fake kernel and gives the eager result."""
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(2, 30, 8, generator=g, device=device)
    weights = torch.rand(2, 30, generator=g, device=device)

    def reduce(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sample = ops.ats_sample(weights, None, 10)
        dpc = ops.dpc_knn(x, 7)
        med = ops.kmedoids(x, weights, 7, 2)
        plan = ops.sinkhorn(x[:, :7] @ x.transpose(1, 2), 1.0, 3)
        return (*sample, *dpc, *med, plan)

    compiled = torch.compile(reduce, fullgraph=True, dynamic=False)
    for got, want in zip(compiled(x, weights), reduce(x, weights), strict=True):
        torch.testing.assert_close(got, want)


def test_compiled_sinkhorn_backward(device):
    z = torch.randn(2, 4, 9, device=device, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(lambda s: ops.sinkhorn(s, 0.5, 3).square().sum(), fullgraph=True)
    (grad_compiled,) = torch.autograd.grad(compiled(z), z)
    (grad_eager,) = torch.autograd.grad(ops.sinkhorn(z, 0.5, 3).square().sum(), z)
    torch.testing.assert_close(grad_compiled, grad_eager)


FALLBACK_SCRIPT = """
import sys, warnings
sys.modules["tokred._C"] = None  # as if the extension had not been built
import torch
from tokred import ops, reference
assert ops.EXTENSION_ERROR is not None
x, w = torch.randn(2, 12, 4), torch.rand(2, 12)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = [ops.ats_sample(w, None, 5), ops.dpc_knn(x, 3), ops.kmedoids(x, w, 3), ops.sinkhorn(x[:, :3] @ x.mT)]
wanted = [reference.ats_sample(w, None, 5), reference.dpc_knn(x, 3), reference.kmedoids(x, w, 3),
          reference.sinkhorn(x[:, :3] @ x.mT)]
for got, want in zip(results, wanted):
    for g, r in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
        assert torch.equal(g, r)
messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
assert len(messages) == 1 and "reference" in messages[0], messages
print("fallback ok")
"""


def test_reference_fallback_without_extension():
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


# ------------------------------------------------------------------------------------------ bad input

x3 = torch.randn(2, 10, 4)
w2 = torch.rand(2, 10)
z3 = torch.randn(2, 3, 10)
BAD_CALLS = [
    (lambda: ops.ats_sample(w2[0], None, 3), ValueError, "scores must have 2 dimensions"),
    (lambda: ops.ats_sample(w2, None, 0), ValueError, r"num_samples must be >= 1"),
    (lambda: ops.ats_sample(w2, w2 > 0.5, 3, "median"), ValueError, "rule must be one of"),
    (lambda: ops.ats_sample(w2, w2, 3), TypeError, "mask must be a bool tensor"),
    (lambda: ops.ats_sample(w2, torch.ones(2, 9, dtype=torch.bool), 3), ValueError, r"shape \(2, 10\)"),
    (lambda: ops.ats_sample(w2.long(), None, 3), TypeError, "floating-point"),
    (lambda: ops.dpc_knn(w2, 3), ValueError, "x must have 3 dimensions"),
    (lambda: ops.dpc_knn(x3, 11), ValueError, r"num_clusters must be \[1, 10\], got 11"),
    (lambda: ops.dpc_knn(x3, 0), ValueError, r"num_clusters must be \[1, 10\], got 0"),
    (lambda: ops.dpc_knn(x3, 3, k_neighbors=0), ValueError, "k_neighbors"),
    (lambda: ops.dpc_knn(x3, 3.5), TypeError, "num_clusters must be an int"),
    (lambda: ops.kmedoids(x3, w2[:, :5], 3), ValueError, r"weights must be a tensor of shape \(2, 10\)"),
    (lambda: ops.kmedoids(x3, w2, 11), ValueError, "num_clusters"),
    (lambda: ops.kmedoids(x3, w2, 3, -1), ValueError, "iters must be >= 0"),
    (lambda: ops.kmedoids(x3, w2, 3, 3, "kmeans"), ValueError, "rule must be one of"),
    (lambda: ops.sinkhorn(z3, 0.0), ValueError, "eps must be positive"),
    (lambda: ops.sinkhorn(z3, -1.0), ValueError, "eps must be positive"),
    (lambda: ops.sinkhorn(z3, 1.0, -2), ValueError, "iters must be >= 1"),
    (lambda: ops.sinkhorn(z3, 1.0, 0), ValueError, "iters must be >= 1"),
    (lambda: ops.sinkhorn(z3[0]), ValueError, "scores must have 3 dimensions"),
    (lambda: ops.sinkhorn(z3, 1.0, 3, "uniform"), ValueError, "marginals must be one of"),
    (lambda: ops.kmedoids(x3, w2.to("meta"), 3), ValueError, "weights is on meta but the input is on cpu"),
    (lambda: ops.dpc_knn(x3, 3, mask=(w2 > 0).to("meta")), ValueError, "mask is on meta"),
]


@pytest.mark.parametrize("call,error,message", BAD_CALLS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_kernel_checks_its_own_input():
    """The C++ side refuses bad calls too, for users of torch.ops.tokred directly."""
    with pytest.raises(RuntimeError, match="number of clusters"):
        torch.ops.tokred.dpc_knn(x3, 20, 5, None, None)
    with pytest.raises(RuntimeError, match="eps must be positive"):
        torch.ops.tokred.sinkhorn(z3, 0.0, 3, "paper")
    with pytest.raises(RuntimeError, match="rule must be"):
        torch.ops.tokred.kmedoids(x3, w2, 3, 3, "other")


# ------------------------------------------------------------------------------ fake kernels, raw calls


def on_meta(args: tuple, positions: set[int] | None = None) -> tuple:
    """args with the tensors at ``positions`` (all by default) moved to the meta device."""
    return tuple(
        a.detach().to("meta") if isinstance(a, torch.Tensor) and (positions is None or i in positions) else a
        for i, a in enumerate(args)
    )


def test_fake_kernels_give_the_kernels_shapes():
    """On consistent meta inputs each fake kernel gives the CPU kernel's output shapes and dtypes."""
    for name, args in sample_calls(torch.device("cpu")).items():
        op = getattr(torch.ops.tokred, name)
        want, got = tree_leaves(op(*args)), tree_leaves(op(*on_meta(args)))
        for w, g in zip(want, got, strict=True):
            assert (g.device.type, g.shape, g.dtype) == ("meta", w.shape, w.dtype), name


def test_raw_calls_on_mixed_devices_refused():
    """A meta tensor beside CPU ones sends the call to the fake kernel, which must refuse it, not return garbage."""
    calls = sample_calls(torch.device("cpu"))
    calls["dpc_knn"] = (*calls["dpc_knn"][:4], torch.rand(3, 20))  # with noise, to check it too
    for name, args in calls.items():
        op = getattr(torch.ops.tokred, name)
        tensors = {i for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
        for i in tensors if len(tensors) > 1 else ():  # sinkhorn has one tensor: it cannot mix devices
            with pytest.raises(ValueError, match="is on (meta|cpu) but the input is on (cpu|meta)"):
                op(*on_meta(args, {i}))  # one meta tensor among CPU ones
            with pytest.raises(ValueError, match="is on (meta|cpu) but the input is on (cpu|meta)"):
                op(*on_meta(args, tensors - {i}))  # one CPU tensor among meta ones


def bad_raw_calls() -> list[tuple[str, tuple, str]]:
    """(op, CPU arguments the kernels refuse, a pattern both the kernel's and the fake kernel's message match)."""
    x, w, z = torch.randn(2, 10, 4), torch.rand(2, 10), torch.randn(2, 3, 10)
    mask = w > 0.5
    _, u, v = torch.ops.tokred.sinkhorn(z, 1.0, 2, "paper")
    return [
        ("ats_sample", (w[0], mask[0], 3, "nearest"), "scores must have 2 dimensions"),
        ("ats_sample", (w.long(), mask, 3, "nearest"), "scores must be .*floating"),
        ("ats_sample", (w, w, 3, "nearest"), "mask must be a bool tensor"),
        ("ats_sample", (w, mask[:, :9], 3, "nearest"), "mask must be a"),
        ("ats_sample", (w, mask, 0, "nearest"), "num_samples must be"),
        ("ats_sample", (w, mask, 3, "median"), "rule must be"),
        ("dpc_knn", (w, 3, 5, None, None), "x must have 3 dimensions"),
        ("dpc_knn", (x.long(), 3, 5, None, None), "x must be .*floating"),
        ("dpc_knn", (x, 11, 5, None, None), "clusters must be"),
        ("dpc_knn", (x, 0, 5, None, None), "clusters must be"),
        ("dpc_knn", (x, 3, 0, None, None), "k_neighbors must be"),
        ("dpc_knn", (x, 3, 5, mask[:, :9], None), "mask must be a tensor of shape"),
        ("dpc_knn", (x, 3, 5, w, None), "mask must be a bool tensor"),
        ("dpc_knn", (x, 3, 5, None, w[:, :9]), "noise must be a tensor of shape"),
        ("dpc_knn", (x, 3, 5, None, mask), "noise must be .*floating"),
        ("kmedoids", (x, w[:, :9], 3, 3, "paper"), "weights must be a tensor of shape"),
        ("kmedoids", (x, mask, 3, 3, "paper"), "weights must be .*floating"),
        ("kmedoids", (x, w, 11, 3, "paper"), "clusters must be"),
        ("kmedoids", (x, w, 3, -1, "paper"), "iters must be"),
        ("kmedoids", (x, w, 3, 3, "kmeans"), "rule must be"),
        ("sinkhorn", (z[0], 1.0, 3, "paper"), "scores must have 3 dimensions"),
        ("sinkhorn", (z, 0.0, 3, "paper"), "eps must be positive"),
        ("sinkhorn", (z, 1.0, 0, "paper"), "iters must be"),
        ("sinkhorn", (z, 1.0, 3, "uniform"), "marginals must be"),
        ("sinkhorn_backward", (z[:, :2], z, u, v, 1.0, "paper"), "grad_plan must be"),
        ("sinkhorn_backward", (z.long(), z, u, v, 1.0, "paper"), "grad_plan must be .*floating"),
        ("sinkhorn_backward", (z, z, u[:, :, :2], v, 1.0, "paper"), "u (and v )?must be"),
        ("sinkhorn_backward", (z, z, u, v[:, :1], 1.0, "paper"), "(u and )?v must be"),
        ("sinkhorn_backward", (z, z, u, v, -1.0, "paper"), "eps must be positive"),
        ("sinkhorn_backward", (z, z, u, v, 1.0, "uniform"), "marginals must be"),
    ]


@pytest.mark.parametrize("name,args,message", bad_raw_calls())
def test_fake_kernel_refuses_what_the_kernel_refuses(name, args, message):
    op = getattr(torch.ops.tokred, name)
    with pytest.raises(RuntimeError, match=message):
        op(*args)
    with pytest.raises((ValueError, TypeError), match=message):
        op(*on_meta(args))
