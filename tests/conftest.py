import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


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
