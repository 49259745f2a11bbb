"""Builds tokred._C: the C++ CPU kernels always, the CUDA kernels when torch has CUDA and nvcc is found.

TOKRED_CPU_ONLY=1 skips the CUDA kernels (fast local builds); TOKRED_REQUIRE_CUDA=1 fails the build
when they cannot be compiled. The CPU kernels are compiled for the building machine's own instruction set
(-march=native: AVX-512 where it has it); TOKRED_MARCH names another target (e.g. x86-64-v3 for a cluster
whose nodes differ from the one that builds), TOKRED_MARCH=none the compiler's default.
tokred._C_emulated is always built: the CUDA kernels compiled as plain C++ over the CPU emulation of
csrc/emulation, which the tests run where no GPU exists.
"""

import os
import platform
import sysconfig
from pathlib import Path

import torch
from setuptools import setup

if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and Path("/usr/local/cuda/bin/nvcc").exists():
    # torch would otherwise take the toolkit root from the first nvcc on PATH, which may be a wrapper script
    # outside the toolkit (then libcudart is not found at link time).
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME on import)

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def cuda_available() -> bool:
    """Whether this torch is a CUDA build and nvcc is installed, with the reason when not."""
    if env_flag("TOKRED_CPU_ONLY"):
        return False
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif cpp_extension.CUDA_HOME is None or not (Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc").exists():
        reason = "nvcc was not found (set CUDA_HOME)"
    if reason and env_flag("TOKRED_REQUIRE_CUDA"):
        raise RuntimeError(f"TOKRED_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    if reason:
        print(f"tokred: building the CPU kernels only: {reason}")
    return reason is None


def cuda_include_dirs() -> list[str]:
    """torch's CUDA headers (cublas_v2.h, cusparse.h, ...) ship in the nvidia/cu* wheels, not the toolkit."""
    nvidia = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    return [str(p) for p in sorted(nvidia.glob("cu*/include"))]


def march_flags() -> list[str]:
    """-march for the CPU kernels: their vector loops are written for the widest registers the target has."""
    march = os.environ.get("TOKRED_MARCH", "native" if platform.machine() in ("x86_64", "AMD64") else "none")
    return [] if march == "none" else [f"-march={march}"]


def extension() -> cpp_extension.CppExtension:
    sources = [CSRC / "tokred.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    flags = {"cxx": ["-O3", "-fopenmp", *march_flags()]}  # OpenMP: at::parallel_for is serial without it
    link = ["-fopenmp"]
    if not cuda_available():
        return cpp_extension.CppExtension(
            "tokred._C", relative(sources), extra_compile_args=flags, extra_link_args=link
        )
    sources += sorted((CSRC / "cuda").glob("*.cu"))
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        # Without a GPU to ask, torch would compile for every architecture it knows: Ampere and Hopper
        # natively, newer GPUs through PTX.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    flags["nvcc"] = ["-O3", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "tokred._C",
        relative(sources),
        include_dirs=cuda_include_dirs(),
        extra_compile_args=flags,
        extra_link_args=link,
    )


def emulated_extension() -> cpp_extension.CppExtension:
    """tokred._C_emulated: one translation unit per op (it includes ../cuda/<op>.cu), the runtime, the module."""
    emulation = CSRC / "emulation"
    return cpp_extension.CppExtension(
        "tokred._C_emulated",
        relative(sorted(emulation.glob("*.cpp"))),
        include_dirs=[str(emulation / "include")],  # before torch's: the stand-ins for the CUDA headers
        # g++ ignores nvcc's #pragma unroll; the CPU kernels' target, so that both contract the same FMAs
        extra_compile_args={"cxx": ["-O2", "-Wno-unknown-pragmas", *march_flags()]},
    )


def relative(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


setup(
    ext_modules=[extension(), emulated_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
