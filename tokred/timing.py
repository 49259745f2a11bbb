"""Timing shared by the benchmarks and the sweep: functions timed in turns, so their ratios survive a busy machine."""

import math
import statistics
import time
from collections.abc import Callable

import torch


def measure(
    fns: dict[str, tuple[Callable[..., object], tuple]],
    device: torch.device,
    min_time: float = 1.0,
    burst: float = 0.02,
    max_rounds: int = 30,
) -> dict[str, float]:
    """Median wall time in milliseconds of each ``fn(*args)``.

    The functions take turns, a burst of back-to-back calls of each (about ``burst`` seconds, at least one
    call) per round, so that a slower or busier stretch of a shared machine weighs on every column of a row
    alike and their ratios hold, while each call still runs warm, as it does when a model calls it again.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn: Callable[..., object], args: tuple, calls: int) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        sync()
        return (time.perf_counter() - t0) / calls

    calls = {}
    for name, (fn, args) in fns.items():
        fn(*args)  # warm-up
        sync()
        calls[name] = max(1, math.ceil(burst / timed(fn, args, 1)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (time.perf_counter() - start < min_time and rounds < max_rounds):
        for name, (fn, args) in fns.items():
            times[name].append(timed(fn, args, calls[name]) * 1e3)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def forward_pass(
    model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[Callable[[], None], tuple]:
    """One inference pass of ``model`` on ``images`` (under autocast to ``dtype`` unless float32), in the form
    :func:`measure` takes."""
    autocast = torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run() -> None:
        with torch.inference_mode(), autocast:
            model(images)

    return run, ()
