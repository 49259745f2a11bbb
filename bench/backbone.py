"""What the backbone alone allows: a ViT's blocks, unreduced, fed fewer tokens.

Times ``model.blocks`` on [B, N, C] inputs for N = every token (197 for DeiT) and the counts given, in turns, and
prints the efficiency of each count (speed-up × FLOP ratio, FLOPs from torch.utils.flop_counter), the same
figure bench/models.py gives a reduction method. No reduction code runs: where a count's efficiency is below 1,
the matrix products themselves run less efficiently on fewer rows (small batches on a CPU), and that part of a
method's shortfall in bench/models.py is the backbone's, not the method's.

    python bench/backbone.py --batch 1 8 --tokens 99 50
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import timm  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from tokred.timing import measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, nargs="+", default=[99, 50], help="token counts besides all")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = timm.create_model(args.model).eval()
    full = model.patch_embed.num_patches + model.num_prefix_tokens
    counts = [full, *args.tokens]

    def blocks(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model.blocks(x)

    def flops(n: int) -> float:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.blocks(torch.randn(1, n, model.embed_dim))
        return counter.get_total_flops()

    print(
        f"{args.model} blocks, CPU, {args.threads} threads\n\n| batch | tokens | FLOP ratio | speed-up | efficiency |"
    )
    print("|---|---|---|---|---|")
    for batch in args.batch:
        inputs = {n: torch.randn(batch, n, model.embed_dim) for n in counts}
        ms = measure({n: (blocks, (inputs[n],)) for n in counts}, torch.device("cpu"), args.min_time)
        for n in args.tokens:
            flop_ratio, speedup = flops(n) / flops(full), ms[full] / ms[n]
            print(f"| {batch} | {n} of {full} | {flop_ratio:.3f} | {speedup:.2f} | {speedup * flop_ratio:.2f} |")


if __name__ == "__main__":
    main()
