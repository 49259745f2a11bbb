"""`python -m tokred.export --model NAME --method M --r R --out F.onnx`: a reducing ViT as an ONNX file (or, for
F.pt2, a saved torch.export program), checked against PyTorch on a batch of another size."""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import tokred
from tokred.export import Deployed, default_example, export_onnx, export_program, grouping, output_names
from tokred.models import read_state_dict
from tokred.reducers import learned, parse_options

log = logging.getLogger("tokred.export")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tokred.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="deit_small_patch16_224", help="timm ViT name")
    parser.add_argument("--method", required=True, choices=list(tokred.METHODS), help="reduction method")
    parser.add_argument("--r", type=float, default=0.5, help="keep rate in (0, 1]")
    parser.add_argument("--reduction-loc", type=int, nargs="+", default=[3, 6, 9], help="blocks of the stages")
    parser.add_argument(
        "--method-option", action="append", default=[], metavar="KEY=VALUE", help="an option of the method"
    )
    parser.add_argument(
        "--pretrained-path",
        help="weights: the backbone's (a timm checkpoint, .pth or .safetensors) or a whole reducing model's (a state "
        "dict with reducers.* keys, e.g. train/main.py's best_checkpoint.pth); without it random weights (a warning)",
    )
    parser.add_argument("--num-classes", type=int, help="classifier size (default: the weights', else timm's)")
    parser.add_argument(
        "--out", required=True, type=Path, help="the file to write: .onnx (ONNX) or .pt2 (a torch.export program)"
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    parser.add_argument("--batch", type=int, default=2, help="batch of the example traced (the batch stays dynamic)")
    parser.add_argument("--assignments", action="store_true", help="also output each stage's patch assignment")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest logit difference the check accepts")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tokred.ReducingVisionTransformer:
    """The model the arguments name, with its weights."""
    options = parse_options(args.method, args.method_option)
    loc = tuple(args.reduction_loc)
    if args.pretrained_path is None:
        log.warning("no --pretrained-path: exporting random weights")
        return tokred.create_model(
            args.model, args.method, args.r, loc, num_classes=args.num_classes, method_options=options
        )
    state = read_state_dict(args.pretrained_path)
    if not any(key.startswith("reducers.") for key in state):  # backbone weights: timm's loader reads them
        if learned(args.method):
            log.warning(
                "%s has no reducers.* weights: the learned %s modules keep their random initialisation",
                args.pretrained_path,
                args.method,
            )
        return tokred.create_model(
            args.model,
            args.method,
            args.r,
            loc,
            pretrained_path=args.pretrained_path,
            num_classes=args.num_classes,
            method_options=options,
        )
    num_classes = args.num_classes if args.num_classes is not None else state["head.weight"].shape[0]
    model = tokred.create_model(args.model, args.method, args.r, loc, num_classes=num_classes, method_options=options)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{args.pretrained_path} does not fit {args.model} with {args.method} at r = {args.r} and "
            f"reduction blocks {loc}: {error}"
        ) from error
    return model


RUNTIMES = {".onnx": "onnxruntime", ".pt2": "torch.export.load"}  # what runs each kind of file in the check


def write(model: tokred.ReducingVisionTransformer, args: argparse.Namespace) -> Path:
    """The model as the file ``args.out`` names: ONNX (.onnx) or a saved ExportedProgram (.pt2)."""
    example = default_example(model, args.batch)
    if args.out.suffix == ".onnx":
        return export_onnx(model, args.out, example, args.opset, args.assignments)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(export_program(model, example, args.assignments), args.out)
    log.info("wrote %s (torch.export; load it with torch.export.load after import tokred)", args.out)
    return args.out


def as_arrays(outputs: Tensor | tuple[Tensor, ...]) -> list[np.ndarray]:
    """A :class:`Deployed` module's outputs (logits, or logits and assignments) as arrays."""
    return [t.cpu().numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


def run_file(path: Path, images: Tensor) -> list[np.ndarray]:
    """The outputs of a written file on images [B, 3, H, W], run as :data:`RUNTIMES` says."""
    if path.suffix == ".pt2":
        with torch.no_grad():
            return as_arrays(torch.export.load(path).module()(images))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.cpu().numpy()})


def verify(model: tokred.ReducingVisionTransformer, path: Path, batch: int, assignments: bool, atol: float) -> float:
    """Run the file on ``batch`` (≠ the example's) random images of a fixed seed; the largest logit difference from
    PyTorch. Raises when it exceeds ``atol`` or when a stage groups the patches into other tokens (the tokens'
    order may differ: see :func:`grouping`)."""
    runtime = RUNTIMES[path.suffix]
    images = default_example(model, batch, seed=0)
    outputs = run_file(path, images)
    with torch.no_grad():
        expected = as_arrays(Deployed(model.eval(), assignments)(images))
    for name, got, want in zip(output_names(model, assignments)[1:], outputs[1:], expected[1:], strict=True):
        differ = (grouping(got) != grouping(want)).any(1)
        if differ.any():
            raise RuntimeError(
                f"{path}: at {name} {runtime} groups the patches of {differ.sum()} of {batch} images into other "
                "tokens than PyTorch. A score tied to float32 rounding can do this (README, Deploy); check the file "
                "on your own images, or pass --no-verify to skip this check"
            )
    error = float(np.abs(outputs[0] - expected[0]).max())
    if error > atol:
        raise RuntimeError(f"{path}: {runtime}'s logits differ from PyTorch's by {error:.3g}, above --atol {atol}")
    return error


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("tokred").setLevel(logging.INFO)
    args = parse_args(argv)
    if args.batch < 2:
        raise SystemExit("--batch must be >= 2: a batch of 1 would fix the batch size of the graph")
    if args.out.suffix not in RUNTIMES:
        raise SystemExit(f"--out must end in {' or '.join(RUNTIMES)} (ONNX or torch.export), got {args.out}")
    model = build(args).eval()
    path = write(model, args)
    if not args.no_verify:
        error = verify(model, path, args.batch + 1, args.assignments, args.atol)
        log.info(
            "%s at batch %d: logits within %.2g of PyTorch%s",
            RUNTIMES[path.suffix],
            args.batch + 1,
            error,
            ", every stage's tokens the same" if args.assignments else "",
        )
    return path


if __name__ == "__main__":
    main()
