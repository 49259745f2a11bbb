"""Time each operator's compiled kernel against what a user would otherwise run and against the floor of its work.

Per row, in one run on the same inputs:
- batched: the same algorithm as plain batched PyTorch, the way the study's code writes it (bench/baselines.py:
  GEMM distances + topk + gather, logsumexp iterations, cumsum + searchsorted); "× batched" = batched / kernel.
- floor: DPC-KNN and K-Medoids, the batched Gram-matrix GEMM x·xᵀ (torch.baddbmm, same dtype) that their
  N×N×C distances need; Sinkhorn and ATS, a copy of as many bytes as the op reads once and writes once
  (half the bytes read, half written), timed on the device. "× floor" = kernel / floor.
- reference: tokred.reference.<op> (readable, exact distances; the ground truth, not the yardstick), eager and
  torch.compile'd.

Sizes are the study's: N = 196 tokens, C = 192/384/768 (DeiT-T/S/B), K = floor(196 r) for
r = 0.25/0.5/0.7/0.9, B = 64 and 256. Prints one table per device and writes them as JSON.

    python bench/ops.py                      # CPU (2 threads) and, when present, CUDA
    python bench/ops.py --quick              # one small configuration per op (the demo)
    python bench/ops.py --device cuda --batch 256
    python bench/ops.py --ops sinkhorn ats_sample  # only these operators
"""

import argparse
import json
import logging
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from bench import baselines  # noqa: E402
from tokred import ops, reference  # noqa: E402
from tokred.timing import measure  # noqa: E402

log = logging.getLogger("bench.ops")

N = 196
RATES = (0.25, 0.5, 0.7, 0.9)
CHANNELS = (192, 384, 768)
BENCHED_OPS = ("ats_sample", "dpc_knn", "kmedoids", "sinkhorn")


@dataclass
class Row:
    op: str
    device: str
    batch: int
    channels: int
    clusters: int
    kernel_ms: float
    batched_ms: float
    floor: str
    floor_ms: float
    reference_ms: float
    compiled_ms: float | None
    io_bytes: int

    def ratios(self) -> dict[str, float | None]:
        """× batched and × reference/compiled (speed-ups of the kernel), × floor (kernel time over the floor)."""
        return {
            "x_batched": self.batched_ms / self.kernel_ms,
            "x_floor": self.kernel_ms / self.floor_ms,
            "x_reference": self.reference_ms / self.kernel_ms,
            "x_compiled": self.compiled_ms / self.kernel_ms if self.compiled_ms else None,
        }


@dataclass
class Case:
    """One operator call (the same arguments for ops.<op> and reference.<op>), the call of its batched
    baseline, the bytes that a single pass over its inputs and outputs moves, and the floor."""

    op: str
    channels: int
    clusters: int
    args: tuple
    batched_args: tuple
    io_bytes: int
    floor: str  # "gemm" (baselines.gram) or "copy" (baselines.copy)
    floor_args: tuple


def copy_case(op: str, clusters: int, args: tuple, batched_args: tuple, io_bytes: int) -> Case:
    """A memory-bound op: its floor copies io_bytes / 2 bytes (reads and writes io_bytes in all)."""
    src = torch.empty(io_bytes // 2, dtype=torch.uint8, device=args[0].device)
    return Case(op, 0, clusters, args, batched_args, io_bytes, "copy", (src, torch.empty_like(src)))


def cases(batch: int, device: torch.device, channels: tuple[int, ...], rates: tuple[float, ...]) -> list[Case]:
    g = torch.Generator(device).manual_seed(0)
    out: list[Case] = []
    scores = torch.rand(batch, N, generator=g, device=device)
    mask = torch.ones(batch, N, dtype=torch.bool, device=device)
    for k in (int(N * r) for r in rates):
        sample_bytes = batch * k * (8 + 1) + batch * 8
        io = scores.nbytes + mask.nbytes + sample_bytes
        out.append(copy_case("ats_sample", k, (scores, mask, k), (scores, k), io))
        z = torch.randn(batch, k, N, generator=g, device=device)
        out.append(copy_case("sinkhorn", k, (z,), (z,), 2 * z.nbytes))
    for c in channels:
        x = torch.randn(batch, N, c, generator=g, device=device)
        gram = (x, x.new_empty(batch, N, N))
        for k in (int(N * r) for r in rates):
            labels = batch * (k + N) * 8
            out.append(Case("dpc_knn", c, k, (x, k), (x, k), x.nbytes + labels, "gemm", gram))
            io = x.nbytes + scores.nbytes + labels
            out.append(Case("kmedoids", c, k, (x, scores, k), (x, scores, k), io, "gemm", gram))
    return out


def run(
    device: torch.device,
    batches: tuple[int, ...],
    channels: tuple[int, ...],
    rates: tuple[float, ...],
    with_compile: bool,
    selected: tuple[str, ...] = BENCHED_OPS,
) -> list[Row]:
    compiled = {op: torch.compile(getattr(reference, op), dynamic=True) for op in selected}
    rows = []
    for batch in batches:
        for case in (c for c in cases(batch, device, channels, rates) if c.op in selected):
            floor = baselines.gram if case.floor == "gemm" else baselines.copy
            fns = {
                "kernel": (getattr(ops, case.op), case.args),
                "batched": (getattr(baselines, case.op), case.batched_args),
                "floor": (floor, case.floor_args),
                "reference": (getattr(reference, case.op), case.args),
            }
            if with_compile:
                fns["compiled"] = (compiled[case.op], case.args)
            ms = measure(fns, device)
            row = Row(
                case.op,
                device.type,
                batch,
                case.channels,
                case.clusters,
                kernel_ms=ms["kernel"],
                batched_ms=ms["batched"],
                floor=case.floor,
                floor_ms=ms["floor"],
                reference_ms=ms["reference"],
                compiled_ms=ms.get("compiled"),
                io_bytes=case.io_bytes,
            )
            log.info(
                "%-10s B=%-3d C=%-3d K=%-3d kernel %.3f ms, batched %.3f ms, %s floor %.3f ms, reference %.3f ms",
                row.op,
                batch,
                row.channels,
                row.clusters,
                row.kernel_ms,
                row.batched_ms,
                row.floor,
                row.floor_ms,
                row.reference_ms,
            )
            rows.append(row)
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    model = models[0] if models else platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def table(rows: list[Row]) -> str:
    header = (
        "| op | B | C | K | kernel ms | batched ms | × batched | floor | floor ms | × floor | "
        "reference ms | × ref | compiled ref ms | × compiled | I/O MB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        x = r.ratios()
        compiled = f"{r.compiled_ms:.3f} | {x['x_compiled']:.1f}" if r.compiled_ms else "– | –"
        lines.append(
            f"| {r.op} | {r.batch} | {r.channels or '–'} | {r.clusters} | {r.kernel_ms:.3f} | "
            f"{r.batched_ms:.3f} | {x['x_batched']:.2f} | {r.floor} | {r.floor_ms:.3f} | {x['x_floor']:.2f} | "
            f"{r.reference_ms:.3f} | {x['x_reference']:.1f} | {compiled} | {r.io_bytes / 1e6:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the goal is stated for 2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--quick", action="store_true", help="B=64, C=384, r=0.5 only, no torch.compile")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    parser.add_argument("--ops", nargs="+", choices=BENCHED_OPS, default=list(BENCHED_OPS), help="operators to time")
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
        with_compile = not (args.quick or args.no_compile)
        rows = run(device, batches, channels, rates, with_compile, tuple(args.ops))
        name = device_name(device)
        print(f"\n### {device.type}: {name} (torch {torch.__version__})\n\n{table(rows)}")
        path = args.out / f"ops_{device.type}.json"
        record = {
            "device": name,
            "torch": torch.__version__,
            "floors": {"gemm": "one torch.baddbmm x·xᵀ [B, N, N]", "copy": "a copy of io_bytes / 2 bytes"},
            "rows": [asdict(r) | r.ratios() for r in rows],
        }
        path.write_text(json.dumps(record, indent=1))
        print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
