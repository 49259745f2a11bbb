"""The operators: typed wrappers over ``torch.ops.tokred``, their fake kernels and Sinkhorn's autograd.

Each function has the signature of its twin in :mod:`tokred.reference`, checks its arguments, and runs
the compiled kernel for the input's device. Without a kernel for that device (no ``tokred._C``, or a
CPU-only build given CUDA tensors) it runs the reference instead and warns once.
"""

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from tokred import reference
from tokred.reference import ATS_RULES, KMEDOIDS_RULES, SINKHORN_MARGINALS
from tokred.reference.distance import accumulation_dtype

try:
    from tokred import _C  # noqa: F401  (registers the torch.ops.tokred operators)

    EXTENSION_ERROR: ImportError | None = None
except ImportError as error:
    EXTENSION_ERROR = error

_warned_fallback = False
_references_only = False


class AtsSample(NamedTuple):
    """ids [B, M] int64 (unique, ascending, right-padded with -1), mask [B, M] bool, counts [B] int64."""

    ids: Tensor
    mask: Tensor
    counts: Tensor


class Clustering(NamedTuple):
    """centres [B, K] int64 token indices, assignment [B, N] int64 cluster of each token."""

    centres: Tensor
    assignment: Tensor


OPS = ("ats_sample", "dpc_knn", "kmedoids", "sinkhorn", "sinkhorn_backward")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
# Looked up once: torch.compile cannot trace the dispatcher query itself.
_KERNELS = frozenset(
    (op, device_type)
    for op in OPS
    for device_type, key in _DISPATCH_KEYS.items()
    if EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"tokred::{op}", key)
)


def registered_ops() -> list[str]:
    """Names of the tokred operators the dispatcher knows (empty without the extension)."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("tokred::"))


def has_kernel(op: str, device: torch.device) -> bool:
    """Whether the compiled extension has ``tokred::op`` for this device's type."""
    return (op, device.type) in _KERNELS


@contextmanager
def references_only() -> Iterator[None]:
    """Inside, every operator runs its pure-PyTorch reference, also where a kernel exists: for exporters whose
    graphs cannot hold custom operators (ONNX), the references are the operators' decomposition."""
    global _references_only
    previous, _references_only = _references_only, True
    try:
        yield
    finally:
        _references_only = previous


def _use_kernel(op: str, device: torch.device) -> bool:
    global _warned_fallback
    if _references_only:
        return False
    if has_kernel(op, device):
        return True
    if not _warned_fallback:
        why = f"tokred._C failed to import ({EXTENSION_ERROR})" if EXTENSION_ERROR else f"no {device.type} kernels"
        warnings.warn(
            f"tokred: {why}; running the pure-PyTorch reference operators instead (slower). "
            "Rebuild with `pip install -e . --no-build-isolation`.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned_fallback = True
    return False


# ----------------------------------------------------------------------------------------------- checks
# One check per operator, shared by its wrapper and its fake kernel. The dispatcher sends a torch.ops.tokred
# call to the fake kernel whenever one of its tensors is on the meta device, also beside CPU or CUDA tensors,
# so the fake kernel refuses everything the compiled kernels refuse (csrc/common.h).


def _check_tensor(t: Tensor, name: str, rank: int, floating: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_companion(t: Tensor | None, like: Tensor, name: str, shape: tuple[int, ...], dtype: str) -> None:
    """An optional per-token tensor that must match ``shape`` and live on ``like``'s device."""
    if t is None:
        return
    if not isinstance(t, Tensor) or tuple(t.shape) != shape:
        raise ValueError(f"{name} must be a tensor of shape {shape}, got {getattr(t, 'shape', type(t).__name__)}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {like.device}; move them to one device")
    if dtype == "bool" and t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {t.dtype}")
    if dtype == "float" and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_count(value: int, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | torch.SymInt):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_ats_sample(scores: Tensor, mask: Tensor | None, num_samples: int, rule: str) -> None:
    _check_tensor(scores, "scores", 2)
    _check_companion(mask, scores, "mask", tuple(scores.shape), "bool")
    _check_count(num_samples, "num_samples", 1)
    _check_choice(rule, ATS_RULES, "rule")


def _check_dpc_knn(x: Tensor, num_clusters: int, k_neighbors: int, mask: Tensor | None, noise: Tensor | None) -> None:
    _check_tensor(x, "x", 3)
    batch, n, _ = x.shape
    _check_count(num_clusters, "num_clusters", 1, n)
    _check_count(k_neighbors, "k_neighbors", 1)
    _check_companion(mask, x, "mask", (batch, n), "bool")
    _check_companion(noise, x, "noise", (batch, n), "float")


def _check_kmedoids(x: Tensor, weights: Tensor, num_clusters: int, iters: int, rule: str) -> None:
    _check_tensor(x, "x", 3)
    _check_companion(weights, x, "weights", tuple(x.shape[:2]), "float")
    _check_count(num_clusters, "num_clusters", 1, x.shape[1])
    _check_count(iters, "iters", 0)
    _check_choice(rule, KMEDOIDS_RULES, "rule")


def _check_sinkhorn(scores: Tensor, eps: float, iters: int, marginals: str) -> None:
    _check_tensor(scores, "scores", 3)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    _check_count(iters, "iters", 1)
    _check_choice(marginals, SINKHORN_MARGINALS, "marginals")


def _check_sinkhorn_backward(
    grad_plan: Tensor, scores: Tensor, u: Tensor, v: Tensor, eps: float, marginals: str
) -> None:
    _check_tensor(u, "u", 3)
    _check_sinkhorn(scores, eps, u.shape[1], marginals)
    batch, k, n = scores.shape
    _check_companion(grad_plan, scores, "grad_plan", (batch, k, n), "float")
    _check_companion(u, scores, "u", (batch, u.shape[1], k), "float")
    _check_companion(v, scores, "v", (batch, u.shape[1], n), "float")


@torch.compiler.assume_constant_result
def _memory_and_threads(device: torch.device) -> tuple[int | None, int]:
    """Total memory in bytes of a CPU or CUDA device (None where unknown, e.g. meta) and the CPU's threads."""
    memory = None
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    elif device.type == "cpu" and hasattr(os, "sysconf"):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return memory, torch.get_num_threads()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_distance_workspace(op: str, x: Tensor, per_thread: bool) -> None:
    """Refuse a clustering whose [N, N] distance matrices alone exceed the device's total memory.

    The CUDA kernels and the reference hold one matrix per image, B at once; the CPU kernels one per thread.
    Checked before anything is allocated, so a huge N fails at once with the size it would need.
    """
    if torch.compiler.is_exporting():
        return  # an exported graph cannot refuse; the symbolic batch would only turn the bound into a guard
    memory, threads = _memory_and_threads(x.device)
    if memory is None:
        return
    batch, n, _ = x.shape
    images = min(batch, threads) if per_thread else batch
    acc = accumulation_dtype(x.dtype)
    need = images * n * n * acc.itemsize
    if need > memory:
        held = "one per CPU thread" if per_thread else "one per image"
        raise MemoryError(
            f"tokred.{op} needs {images} distance matrices [N, N] of {_name(acc)} ({held}), {need / 2**30:.1f} GiB "
            f"at once for B = {batch}, N = {n} and x of {_name(x.dtype)}: more than the {memory / 2**30:.1f} GiB "
            f"of {x.device.type} memory. Cluster fewer tokens per image{'' if per_thread else ' or fewer images'}."
        )


def _cluster(op: str, x: Tensor, *args: object) -> Clustering:
    """The clustering ``op`` on x [B, N, C]: the kernel (or the reference), once its workspace fits."""
    use_kernel = _use_kernel(op, x.device)
    _check_distance_workspace(op, x, per_thread=use_kernel and x.device.type == "cpu")
    function = getattr(torch.ops.tokred, op) if use_kernel else getattr(reference, op)
    return Clustering(*function(x, *args))


# ---------------------------------------------------------------------------------------------- ATS


def _kernel_checks(op: str, t: object) -> bool:
    """Whether ``tokred::op`` has a compiled kernel for tensor ``t`` (CPU or CUDA), outside torch.compile.

    That kernel checks its arguments itself (csrc/common.h), so a wrapper can call it unchecked (its Python checks
    take ~1 µs, a tenth of the ATS kernel at the study's sizes) and check only after a refusal, to raise the
    ValueError or TypeError that says what to fix.
    """
    if not isinstance(t, Tensor) or torch.compiler.is_compiling() or _references_only:
        return False
    return (op, "cpu") in _KERNELS if t.is_cpu else t.is_cuda and (op, "cuda") in _KERNELS


def ats_sample(scores: Tensor, mask: Tensor | None, num_samples: int, rule: str = "nearest") -> AtsSample:
    """Adaptive token sampling: invert the CDF of the significance scores at K quantiles (SPEC §3.5).

    Args:
        scores: [B, N] non-negative significance per spatial token (negatives count as 0).
        mask: [B, N] bool, False for tokens that can no longer be sampled; None means all valid.
        num_samples: K ≥ 1 quantile points, the upper bound on kept tokens.
        rule: "nearest" (the study) or "inverse" (textbook inverse transform).

    Returns:
        AtsSample with ids and mask of shape [B, K] (padded to K, so no host synchronisation is needed;
        see :func:`trim_to_batch_max`) and counts [B].
    """
    if _kernel_checks("ats_sample", scores) and type(num_samples) is int:  # a bool is refused below
        valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
        try:
            return AtsSample._make(torch.ops.tokred.ats_sample.default(scores, valid, num_samples, rule))
        except (RuntimeError, TypeError):
            _check_ats_sample(scores, mask, num_samples, rule)
            raise  # a failure the checks do not explain
    _check_ats_sample(scores, mask, num_samples, rule)
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    if _use_kernel("ats_sample", scores.device):
        return AtsSample(*torch.ops.tokred.ats_sample(scores, mask, num_samples, rule))
    return AtsSample(*reference.ats_sample(scores, mask, num_samples, rule))


def trim_to_batch_max(sample: AtsSample) -> AtsSample:
    """Drop the padding columns no image uses: ids and mask become [B, max_b counts_b] (one host sync)."""
    width = int(sample.counts.max()) if sample.counts.numel() else 0
    return AtsSample(sample.ids[:, :width], sample.mask[:, :width], sample.counts)


def _ats_sample_fake(scores: Tensor, mask: Tensor, num_samples: int, rule: str) -> tuple[Tensor, Tensor, Tensor]:
    _check_ats_sample(scores, mask, num_samples, rule)
    batch = scores.shape[0]
    ids = scores.new_empty((batch, num_samples), dtype=torch.long)
    return ids, scores.new_empty((batch, num_samples), dtype=torch.bool), scores.new_empty(batch, dtype=torch.long)


# ------------------------------------------------------------------------------------------ DPC-KNN


def dpc_knn(
    x: Tensor, num_clusters: int, k_neighbors: int = 5, mask: Tensor | None = None, noise: Tensor | None = None
) -> Clustering:
    """Density-peak clustering with a k-nearest-neighbour density (SPEC §3.8).

    Args:
        x: [B, N, C] tokens.
        num_clusters: K in [1, N].
        k_neighbors: neighbours in the density estimate (the token itself included).
        mask: optional [B, N] bool, False for tokens to ignore (assignment -1).
        noise: optional [B, N] added to the densities; ``1e-6 * torch.rand(B, N)`` is the study's random
            tie-break. Without it, ties are broken by index, deterministically.

    Returns:
        Clustering: centres [B, K] in descending score order, assignment [B, N] in [0, K).

    Raises:
        MemoryError: before allocating, when the [N, N] distance matrices alone exceed the device's memory.
    """
    _check_dpc_knn(x, num_clusters, k_neighbors, mask, noise)
    return _cluster("dpc_knn", x, num_clusters, k_neighbors, mask, noise)


def _dpc_knn_fake(
    x: Tensor, num_clusters: int, k_neighbors: int, mask: Tensor | None, noise: Tensor | None
) -> tuple[Tensor, Tensor]:
    _check_dpc_knn(x, num_clusters, k_neighbors, mask, noise)
    return x.new_empty((x.shape[0], num_clusters), dtype=torch.long), x.new_empty(x.shape[:2], dtype=torch.long)


# ---------------------------------------------------------------------------------------- K-Medoids


def kmedoids(x: Tensor, weights: Tensor, num_clusters: int, iters: int = 3, rule: str = "paper") -> Clustering:
    """K-Medoids started from the K heaviest tokens (SPEC §3.7).

    Args:
        x: [B, N, C] tokens.
        weights: [B, N] token weights (the study: attention received).
        num_clusters: K in [1, N].
        iters: T ≥ 0 iterations of assignment and medoid update.
        rule: "paper" (cost w_i · Σ_j D_ij over all tokens) or "medoid" (Σ_j D_ij over own members).

    Returns:
        Clustering: medoids [B, K] (rows of x), assignment [B, N] to the nearest medoid.

    Raises:
        MemoryError: before allocating, when the [N, N] distance matrices alone exceed the device's memory.
    """
    _check_kmedoids(x, weights, num_clusters, iters, rule)
    return _cluster("kmedoids", x, weights, num_clusters, iters, rule)


def _kmedoids_fake(x: Tensor, weights: Tensor, num_clusters: int, iters: int, rule: str) -> tuple[Tensor, Tensor]:
    _check_kmedoids(x, weights, num_clusters, iters, rule)
    return x.new_empty((x.shape[0], num_clusters), dtype=torch.long), x.new_empty(x.shape[:2], dtype=torch.long)


# ----------------------------------------------------------------------------------------- Sinkhorn


def sinkhorn(scores: Tensor, eps: float = 1.0, iters: int = 3, marginals: str = "paper") -> Tensor:
    """Log-domain Sinkhorn transport plan [B, K, N] from scores [B, K, N] (SPEC §3.11).

    Every token's column of the plan sums to 1, to the working precision even for a tiny ε. Differentiable in
    ``scores``, to any order (a gradient that must itself be differentiable comes from the reference).

    Args:
        scores: [B, K, N] cluster-token scores (the study: cosine similarities).
        eps: entropic regularisation ε > 0.
        iters: T ≥ 1 iterations (each a row and a column update).
        marginals: "paper" (μ = ν = 1/(K + N)) or "balanced" (μ = 1/K, ν = 1/N).
    """
    _check_sinkhorn(scores, eps, iters, marginals)
    if _use_kernel("sinkhorn", scores.device):
        return torch.ops.tokred.sinkhorn(scores, float(eps), iters, marginals)[0]
    return reference.sinkhorn(scores, eps, iters, marginals)


def _sinkhorn_fake(scores: Tensor, eps: float, iters: int, marginals: str) -> tuple[Tensor, Tensor, Tensor]:
    _check_sinkhorn(scores, eps, iters, marginals)
    acc = accumulation_dtype(scores.dtype)
    batch, k, n = scores.shape
    return (
        torch.empty_like(scores),
        scores.new_empty((batch, iters, k), dtype=acc),
        scores.new_empty((batch, iters, n), dtype=acc),
    )


def _sinkhorn_backward_fake(
    grad_plan: Tensor, scores: Tensor, u: Tensor, v: Tensor, eps: float, marginals: str
) -> Tensor:
    _check_sinkhorn_backward(grad_plan, scores, u, v, eps, marginals)
    return torch.empty_like(scores)


def _sinkhorn_setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (torch.library's callback signature)
    scores, eps, _, marginals = inputs
    _, u, v = output
    ctx.save_for_backward(scores, u, v)
    ctx.eps, ctx.marginals = eps, marginals


def _sinkhorn_backward(ctx, grad_plan: Tensor, grad_u: Tensor, grad_v: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
    scores, u, v = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: the gradient must be differentiable itself (double backward), which the kernel's is
        # not, so it comes from autograd through the reference, the same function, instead.
        plan = reference.sinkhorn(scores, ctx.eps, u.shape[1], ctx.marginals)
        (grad,) = torch.autograd.grad(plan, scores, grad_plan, create_graph=True)
    else:
        grad = torch.ops.tokred.sinkhorn_backward(grad_plan.contiguous(), scores, u, v, ctx.eps, ctx.marginals)
    return grad, None, None, None


if EXTENSION_ERROR is None:
    for _op, _fake in [
        ("ats_sample", _ats_sample_fake),
        ("dpc_knn", _dpc_knn_fake),
        ("kmedoids", _kmedoids_fake),
        ("sinkhorn", _sinkhorn_fake),
        ("sinkhorn_backward", _sinkhorn_backward_fake),
    ]:
        torch.library.register_fake(f"tokred::{_op}", _fake)
    torch.library.register_autograd("tokred::sinkhorn", _sinkhorn_backward, setup_context=_sinkhorn_setup_context)
