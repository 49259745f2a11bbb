"""Time each operator: the compiled kernel against its pure-PyTorch reference, eager and torch.compile'd.

Sizes are the study's: N = 196 tokens, C = 192/384/768 (DeiT-T/S/B), K = floor(196 r) for
r = 0.25/0.5/0.7/0.9, B = 64 and 256. Prints one table per device and writes them as JSON.

    python bench/ops.py                      # CPU (2 threads) and, when present, CUDA
    python bench/ops.py --quick              # one small configuration per op (the demo)
    python bench/ops.py --device cuda --batch 256
"""

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tokred import ops, reference

log = logging.getLogger("bench.ops")

N = 196
RATES = (0.25, 0.5, 0.7, 0.9)
CHANNELS = (192, 384, 768)


@dataclass
class Row:
    op: str
    device: str
    batch: int
    channels: int
    clusters: int
    kernel_ms: float
    reference_ms: float
    compiled_ms: float | None
    io_bytes: int

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.kernel_ms


@dataclass
class Case:
    """One operator call (the same arguments for ops.<op> and reference.<op>) and the bytes that a single
    pass over its inputs and outputs moves."""

    op: str
    channels: int
    clusters: int
    args: tuple
    io_bytes: int


def cases(batch: int, device: torch.device, channels: tuple[int, ...], rates: tuple[float, ...]) -> list[Case]:
    g = torch.Generator(device).manual_seed(0)
    out: list[Case] = []
    scores = torch.rand(batch, N, generator=g, device=device)
    mask = torch.ones(batch, N, dtype=torch.bool, device=device)
    for k in (int(N * r) for r in rates):
        sample_bytes = batch * k * (8 + 1) + batch * 8
        out.append(Case("ats_sample", 0, k, (scores, mask, k), scores.nbytes + mask.nbytes + sample_bytes))
        z = torch.randn(batch, k, N, generator=g, device=device)
        out.append(Case("sinkhorn", 0, k, (z,), 2 * z.nbytes))
    for c in channels:
        x = torch.randn(batch, N, c, generator=g, device=device)
        for k in (int(N * r) for r in rates):
            labels = batch * (k + N) * 8
            out.append(Case("dpc_knn", c, k, (x, k), x.nbytes + labels))
            out.append(Case("kmedoids", c, k, (x, scores, k), x.nbytes + scores.nbytes + labels))
    return out


def measure(
    fn: Callable[..., object], args: tuple, device: torch.device, min_time: float = 0.3, max_reps: int = 50
) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds, after a warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn(*args)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn(*args)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(
    device: torch.device,
    batches: tuple[int, ...],
    channels: tuple[int, ...],
    rates: tuple[float, ...],
    with_compile: bool,
) -> list[Row]:
    compiled = {op: torch.compile(getattr(reference, op), dynamic=True) for op in ops.OPS if hasattr(reference, op)}
    rows = []
    for batch in batches:
        for case in cases(batch, device, channels, rates):
            compiled_ms = measure(compiled[case.op], case.args, device) if with_compile else None
            row = Row(
                case.op,
                device.type,
                batch,
                case.channels,
                case.clusters,
                measure(getattr(ops, case.op), case.args, device),
                measure(getattr(reference, case.op), case.args, device),
                compiled_ms,
                case.io_bytes,
            )
            log.info(
                "%-10s B=%-3d C=%-3d K=%-3d kernel %.3f ms, reference %.3f ms",
                row.op,
                batch,
                row.channels,
                row.clusters,
                row.kernel_ms,
                row.reference_ms,
            )
            rows.append(row)
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def table(rows: list[Row], bandwidth_gbs: float | None) -> str:
    header = "| op | B | C | K | kernel ms | reference ms | × ref | compiled ref ms | × compiled |"
    bound = bandwidth_gbs is not None
    if bound:
        header += " I/O MB | I/O bound ms | × bound |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        compiled = f"{r.compiled_ms:.3f} | {r.compiled_ms / r.kernel_ms:.1f}" if r.compiled_ms else "– | –"
        line = (
            f"| {r.op} | {r.batch} | {r.channels or '–'} | {r.clusters} | {r.kernel_ms:.3f} | "
            f"{r.reference_ms:.3f} | {r.speedup:.1f} | {compiled} |"
        )
        if bound:
            floor_ms = r.io_bytes / (bandwidth_gbs * 1e6)
            line += f" {r.io_bytes / 1e6:.2f} | {floor_ms:.4f} | {r.kernel_ms / floor_ms:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the goal is stated for 2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--quick", action="store_true", help="B=64, C=384, r=0.5 only, no torch.compile")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    parser.add_argument("--bandwidth", type=float, default=3350.0, help="GPU memory bandwidth in GB/s (H100 SXM)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        raise SystemExit("--device cuda: no CUDA device is visible")
    batches, channels, rates = tuple(args.batch), CHANNELS, RATES
    if args.quick:
        batches, channels, rates = (64,), (384,), (0.5,)
    missing = [op for op in ops.OPS for d in devices if not ops.has_kernel(op, d)]
    if missing:
        raise SystemExit(
            f"no compiled kernel for {sorted(set(missing))}: build with `pip install -e . --no-build-isolation`"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        rows = run(device, batches, channels, rates, with_compile=not (args.quick or args.no_compile))
        name = device_name(device)
        bandwidth = args.bandwidth if device.type == "cuda" else None
        print(f"\n### {device.type}: {name} (torch {torch.__version__})\n\n{table(rows, bandwidth)}")
        path = args.out / f"ops_{device.type}.json"
        record = {
            "device": name,
            "torch": torch.__version__,
            "bandwidth_gbs": bandwidth,
            "rows": [asdict(r) for r in rows],
        }
        path.write_text(json.dumps(record, indent=1))
        print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
