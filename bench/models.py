"""Throughput and FLOPs of the reducing ViTs against the unreduced DeiT.

For each model × method × keep rate: GFLOPs per image (torch.utils.flop_counter), inference images/s,
the speed-up over the unreduced model, and the efficiency = speed-up × FLOP ratio (1.0: the speed-up is
all the FLOP reduction promises; the goal is ≥ 0.85). Optionally one training step per method.

    python bench/models.py                                   # DeiT-S, r = 0.5, batch 64, CPU float32
    python bench/models.py --models deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224 \\
        --rates 0.25 0.5 0.7 0.9 --batch 16 --train-step     # the whole grid (long on a CPU)
    python bench/models.py --device cuda --dtype bfloat16 --batch 256
    python bench/models.py --models deit_tiny_patch16_224 --batch 8 --compile   # + torch.compile, same run
"""

import argparse
import copy
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import timm  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import tokred  # noqa: E402
from tokred.timing import forward_pass, measure  # noqa: E402

log = logging.getLogger("bench.models")


@dataclass
class Row:
    model: str
    method: str
    keep_rate: float
    gflops: float
    images_per_s: float
    flop_ratio: float = 1.0
    speedup: float = 1.0
    train_step_ms: float | None = None
    compiled_images_per_s: float | None = None

    @property
    def compile_speedup(self) -> float | None:
        """torch.compile's images/s over eager's, timed in turns."""
        return None if self.compiled_images_per_s is None else self.compiled_images_per_s / self.images_per_s

    @property
    def efficiency(self) -> float:
        return self.speedup * self.flop_ratio


def gflops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Forward GFLOPs per image (matrix products and attention; the reduction ops count as free). Attention
    runs unfused here so that the counter sees its products (it does not count every fused CPU kernel)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 1e9 / len(images)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile (inductor) of the eval model in one graph (a graph break fails the row)."""
    return torch.compile(model, fullgraph=True)


def train_step_ms(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    target = torch.zeros(len(images), dtype=torch.long, device=images.device)
    autocast = torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            output = model(images)
        torch.nn.functional.cross_entropy(output.float(), target).backward()
        optimizer.step()

    elapsed_ms = measure({"step": (step, ())}, images.device, min_time=0.0)["step"]
    model.eval()
    return elapsed_ms


def run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[Row]:
    rows = []
    images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    train_images = images[: args.train_batch]
    for name in args.models:
        torch.manual_seed(0)
        base = timm.create_model(name).to(device).eval()
        fns = {"base": forward_pass(base, images, dtype)}
        if args.compile:
            fns["compiled"] = forward_pass(compiled(base), images, dtype)
        base_ms = measure(fns, device, args.min_time)
        base_row = Row(name, "none", 1.0, gflops(base, images[:2]), len(images) / base_ms["base"] * 1e3)
        if args.compile:
            base_row.compiled_images_per_s = len(images) / base_ms["compiled"] * 1e3
        if args.train_step:
            base_row.train_step_ms = train_step_ms(base, train_images, dtype)
        log.info("%s unreduced: %.2f GFLOPs, %.1f img/s", name, base_row.gflops, base_row.images_per_s)
        rows.append(base_row)
        for method in args.methods:
            for rate in args.rates:
                model = tokred.patch(copy.deepcopy(base), method, rate, tuple(args.loc)).eval()
                flops = gflops(model, images[:2])
                # the unreduced model again, in turns with this one: the speed-up is a ratio of one run
                fns = {"base": forward_pass(base, images, dtype), "reduced": forward_pass(model, images, dtype)}
                if args.compile:
                    fns["compiled"] = forward_pass(compiled(model), images, dtype)
                ms = measure(fns, device, args.min_time)
                row = Row(
                    name,
                    method,
                    rate,
                    flops,
                    len(images) / ms["reduced"] * 1e3,
                    flops / base_row.gflops,
                    ms["base"] / ms["reduced"],
                )
                if args.compile:
                    row.compiled_images_per_s = len(images) / ms["compiled"] * 1e3
                if args.train_step and rate == args.rates[0]:
                    row.train_step_ms = train_step_ms(model, train_images, dtype)
                log.info(
                    "%s %s r=%.2f: FLOP ratio %.3f, speed-up %.2f, efficiency %.2f",
                    name,
                    method,
                    rate,
                    row.flop_ratio,
                    row.speedup,
                    row.efficiency,
                )
                rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    compile_columns = any(r.compiled_images_per_s is not None for r in rows)
    extra = " compiled img/s | × compile |" if compile_columns else ""
    lines = [
        f"| model | method | r | GFLOPs | FLOP ratio | img/s | speed-up | efficiency | train step ms |{extra}",
        "|---|---|---|---|---|---|---|---|---|" + "---|---|" * compile_columns,
    ]
    for r in rows:
        train = f"{r.train_step_ms:.0f}" if r.train_step_ms is not None else "–"
        line = (
            f"| {r.model} | {r.method} | {r.keep_rate:g} | {r.gflops:.2f} | {r.flop_ratio:.3f} | {r.images_per_s:.1f} "
            f"| {r.speedup:.2f} | {r.efficiency:.2f} | {train} |"
        )
        if compile_columns and r.compiled_images_per_s is not None:
            line += f" {r.compiled_images_per_s:.1f} | {r.compile_speedup:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deit_small_patch16_224"])
    parser.add_argument("--methods", nargs="+", default=sorted(tokred.METHODS), choices=sorted(tokred.METHODS))
    parser.add_argument("--rates", nargs="+", type=float, default=[0.5])
    parser.add_argument("--loc", nargs="+", type=int, default=[3, 6, 9], help="reduction blocks")
    parser.add_argument("--batch", type=int, default=64, help="inference batch")
    parser.add_argument(
        "--train-step", action="store_true", help="also time one training step per method (at the first rate)"
    )
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (inductor, one graph) of every model, in turns with eager",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed inference per row")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    rows = run(args, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\n### {name}, {args.dtype}, batch {args.batch}, loc {args.loc} (torch {torch.__version__})\n\n{table(rows)}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"models_{device.type}_{args.dtype}.json"
    record = {
        "device": name,
        "dtype": args.dtype,
        "batch": args.batch,
        "rows": [asdict(r) | {"compile_speedup": r.compile_speedup} for r in rows],
    }
    path.write_text(json.dumps(record, indent=1))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
