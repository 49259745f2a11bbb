"""The CUDA kernels' device code, run on the CPU.

``tokred._C_emulated`` holds the kernels of ``csrc/cuda`` compiled as plain C++ over the CPU emulation of
``csrc/emulation`` (fibers for the threads of a block, barriers, warp shuffles, shared memory), registered as the
``torch.ops.tokred_emu`` operators on the CPU. Within :func:`emulated_cuda_kernels` they replace the CPU kernels
of ``torch.ops.tokred``, so that :mod:`tokred.ops` (its wrappers, Sinkhorn's autograd) runs the CUDA code on CPU
tensors: the tests' ``cuda_emulation`` device, where no GPU exists.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tokred import ops

try:
    from tokred import _C_emulated  # noqa: F401  (registers the torch.ops.tokred_emu operators)
except ImportError as error:
    raise ImportError(
        f"tokred._C_emulated failed to import ({error}); rebuild with `pip install -e . --no-build-isolation`"
    ) from error


@contextmanager
def emulated_cuda_kernels() -> Iterator[None]:
    """Within the block, ``torch.ops.tokred.<op>`` on CPU tensors runs the emulated CUDA kernel of ``<op>``.

    The CPU kernels come back on exit, also when the block raises.
    """
    library = torch.library.Library("tokred", "IMPL")
    try:
        for name in ops.OPS:
            library.impl(name, getattr(torch.ops.tokred_emu, name).default, "CPU")
        yield
    finally:
        library._destroy()  # unregisters these kernels: the dispatcher falls back to the ones below them
