import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# cuda_emulation: CPU tensors, and the CUDA kernels' device code emulated on the CPU in place of the CPU kernels.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cuda),
    pytest.param("cuda_emulation", marks=pytest.mark.cuda_emulation),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> Iterator[torch.device]:
    """The device of an operator test; for cuda_emulation the CPU, with the emulated CUDA kernels for the test."""
    if request.param != "cuda_emulation":
        yield torch.device(request.param)
        return
    from tokred.emulation import emulated_cuda_kernels

    with emulated_cuda_kernels():
        yield torch.device("cpu")


def fresh_generator(device: torch.device) -> torch.Generator:
    """A generator freshly seeded from the OS: every run draws new inputs (the seed is printed on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return torch.Generator(device).manual_seed(seed)


@pytest.fixture
def rng(device: torch.device) -> torch.Generator:
    """Fresh random inputs on each tested device."""
    return fresh_generator(device)


@pytest.fixture
def cpu_rng() -> torch.Generator:
    """Fresh random inputs for tests that run on the CPU only."""
    return fresh_generator(torch.device("cpu"))
