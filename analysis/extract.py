"""Step 1 of the analysis: `python -m analysis.extract CHECKPOINT OUT.npz`.

Rebuilds the model of a checkpoint written by train/main.py from its saved configuration, runs it in eval mode
with tracing over a dataset split (the evaluation transform, batched, on the GPU when there is one) and writes
per image the reduction pattern of every stage, the class token after every block, the logits and the targets
to one ``.npz`` file (format: :mod:`analysis.extraction`).

Resumable: every ``--save-every`` batches the finished images go to ``OUT.npz.parts/``; a rerun with the same
checkpoint, weights, dataset and split continues after them. The final file is written atomically and the parts
folder is removed.
"""

import argparse
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import tokred
from analysis.extraction import PADDED, STAGE_ARRAYS, Extraction, stage_key
from train import checkpoint as checkpoints
from train.config import TrainConfig
from train.data import build_transform, load_dataset
from train.metrics import mean_average_precision

log = logging.getLogger("analysis.extract")

REQUIRED = ("model", "method", "r", "reduction_loc", "dataset")  # config keys the model and data come from
MANIFEST = "manifest.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.extract",
        description="Per-image reduction patterns, class-token features and logits of a trained checkpoint on a "
        "dataset split, in one .npz file (format: analysis/extraction.py). Resumable.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by train/main.py (e.g. best_checkpoint.pth)")
    parser.add_argument("out", type=Path, help="the .npz file to write (its folder is created if missing)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (default: the root the run trained on)")
    parser.add_argument(
        "--dataset", metavar="NAME", help="dataset (default: the run's); its classes must match the model's"
    )
    parser.add_argument(
        "--split",
        default="eval",
        choices=["eval", "train"],
        help="split, seen with the evaluation transform (default: %(default)s)",
    )
    parser.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "ema", "model"],
        help="auto (default): the EMA weights when they scored best (the checkpoint's best.source), else the model's",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images of the split")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=4, help="data-loading worker processes (default: %(default)s)")
    parser.add_argument(
        "--save-every",
        type=int,
        default=20,
        help="write partial results every this many batches (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if min(args.batch_size, args.save_every) < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size, --save-every and --limit must be at least 1")
    if args.checkpoint.is_dir():
        parser.error(
            f"CHECKPOINT {args.checkpoint} is a folder: pass a file, e.g. {args.checkpoint / checkpoints.BEST}"
        )
    problem = out_problem(args.out)
    if problem:
        parser.error(f"OUT {args.out} {problem}")
    return args


def out_problem(out: Path) -> str:
    """Why ``out`` cannot be the extraction file to write ("" when it can): checked before any work."""
    if out.is_dir():
        return f"is a folder: OUT is the file to write, e.g. {out / 'extraction.npz'}"
    if out.suffix != ".npz":
        return f"does not end in .npz (python -m analysis.compare finds extraction files by it), e.g. {out}.npz"
    existing = next(folder for folder in out.parents if folder.exists())  # the folder or its nearest ancestor
    if not existing.is_dir():
        return f"cannot be written: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK):
        return f"cannot be written: no permission to write in {existing}"
    return ""


def load_checkpoint(path: Path, weights: str) -> tuple[TrainConfig, dict[str, torch.Tensor], str]:
    """The run's configuration, the chosen state dict, and which weights it is ("ema" or "model"); ``weights``
    "auto" takes those the run's selection chose (:meth:`train.checkpoint.Checkpoint.weights`)."""
    checkpoint = checkpoints.Checkpoint.load(path)
    missing = [key for key in REQUIRED if key not in (checkpoint.config or {})]
    if checkpoint.config and missing:
        raise ValueError(f"the configuration in {path} lacks {', '.join(missing)}: pass a checkpoint of train/main.py")
    config = checkpoint.train_config()
    state_dict, chosen = checkpoint.weights("best" if weights == "auto" else weights)
    return config, state_dict, chosen


def load_split(config: TrainConfig, args: argparse.Namespace) -> Dataset:
    """The split with the evaluation transform, as train/main.py loads it (the first ``--limit`` images)."""
    name = args.dataset or config.dataset
    root = args.data if args.data is not None else (config.data if name == config.dataset else None)
    length = config.demo_train_size if args.split == "train" else config.demo_test_size
    transform = build_transform(name, False, None, 0.0, 0.0, 0.0)
    try:
        dataset = load_dataset(name, root, args.split, transform, demo_length=length, seed=config.seed)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (pass --data to give the dataset's root on this machine)") from error
    if args.limit is not None and args.limit < len(dataset):
        return Subset(dataset, range(args.limit))
    return dataset


def build_model(config: TrainConfig, state_dict: dict[str, torch.Tensor], num_classes: int) -> torch.nn.Module:
    model = tokred.create_model(
        config.model,
        config.method,
        config.r,
        config.reduction_loc,
        num_classes=num_classes,
        method_options=config.method_options,
    )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"the checkpoint's weights do not fit {config.model} with {config.method} and {num_classes} classes: "
            f"was it trained on another dataset than the one given? ({error})"
        ) from error
    return model.eval()


@torch.no_grad()
def run_batch(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    """The arrays of one batch under their archive keys; logits stay float32 until the final file."""
    logits, trace = model(images.to(next(model.parameters()).device), trace=True)
    arrays = {
        "targets": (targets > 0.5).to(torch.uint8).numpy() if targets.ndim == 2 else targets.long().numpy(),
        "logits": logits.float().cpu().numpy(),
        "cls": torch.stack(trace.cls_features, dim=1).half().cpu().numpy(),
    }
    for s, stage in enumerate(trace.stages):
        arrays |= {stage_key(s, name): getattr(stage, name).short().cpu().numpy() for name in STAGE_ARRAYS}
    return arrays


def concatenate(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Chunks of consecutive images joined per key; token columns padded with -1 to the widest chunk."""
    joined = {}
    for key in chunks[0]:
        parts = [chunk[key] for chunk in chunks]
        if key.split("_", 1)[-1] in PADDED:
            width = max(p.shape[1] for p in parts)
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts]
        joined[key] = np.concatenate(parts)
    return joined


class Parts:
    """The finished images of an interrupted extraction: ``{start}-{end}.npz`` files of consecutive images in
    one folder, with a manifest naming what they were extracted from."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        if (folder / MANIFEST).is_file():
            found = json.loads((folder / MANIFEST).read_text())
            if found != manifest:
                changed = sorted(k for k in manifest.keys() | found.keys() if found.get(k) != manifest.get(k))
                raise ValueError(
                    f"{folder} holds partial results of another extraction (different {', '.join(changed)}): "
                    "rerun with the same checkpoint, weights, dataset and split, or delete the folder"
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MANIFEST).write_text(json.dumps(manifest))
        self.files = self._consecutive()

    def _consecutive(self) -> list[Path]:
        """The part files that continue each other from image 0."""
        by_start = {int(f.stem.split("-")[0]): f for f in self.folder.glob("*-*.npz")}
        files, end = [], 0
        while end in by_start:
            files.append(by_start[end])
            end = int(by_start[end].stem.split("-")[1])
        return files

    @property
    def done(self) -> int:
        """Images finished (0, 1, ... done - 1)."""
        return int(self.files[-1].stem.split("-")[1]) if self.files else 0

    def write(self, chunks: list[dict[str, np.ndarray]]) -> None:
        """Save the chunks of the next images atomically."""
        arrays = concatenate(chunks)
        start = self.done
        path = self.folder / f"{start:09d}-{start + len(arrays['targets']):09d}.npz"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)
        self.files.append(path)

    def read(self, count: int) -> dict[str, np.ndarray]:
        """The arrays of the first ``count`` images."""
        chunks = []
        for file in self.files:
            with np.load(file, allow_pickle=False) as archive:
                chunks.append({key: archive[key] for key in archive.files})
        return {key: array[:count] for key, array in concatenate(chunks).items()}


def score(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> tuple[str, float]:
    """The evaluation metric of train/engine.py: ("acc1", top-1 %) or ("map", mAP % of the sigmoid scores)."""
    if multi_label:
        return "map", mean_average_precision(torch.from_numpy(logits).sigmoid(), torch.from_numpy(targets).float())
    return "acc1", 100.0 * float((logits.argmax(1) == targets).mean())


def extract(args: argparse.Namespace) -> Extraction:
    """Run the extraction the arguments describe, write ``args.out`` and return what it holds."""
    config, state_dict, weights = load_checkpoint(args.checkpoint, args.weights)
    dataset = load_split(config, args)
    full = dataset.dataset if isinstance(dataset, Subset) else dataset
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(config, state_dict, full.num_classes).to(device)
    source = args.checkpoint.resolve()
    manifest = {
        "checkpoint": str(source),
        "checkpoint_bytes": source.stat().st_size,
        "checkpoint_mtime_ns": source.stat().st_mtime_ns,
        "weights": weights,
        "dataset": args.dataset or config.dataset,
        "data": args.data if args.data is not None else config.data,
        "split": args.split,
    }
    parts = Parts(args.out.with_name(args.out.name + ".parts"), manifest)
    total = len(dataset)
    if parts.done < total:
        what = f"{config.model} {config.method} r={config.r:g} on {manifest['dataset']}/{args.split}"
        log.info("%s, %s weights, %s; %d of %d images already done", what, weights, device, parts.done, total)
        loader = DataLoader(
            Subset(dataset, range(parts.done, total)),
            args.batch_size,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        pending: list[dict[str, np.ndarray]] = []
        with tqdm(total=total, initial=parts.done, unit="img", desc="extract") as bar:
            for images, targets in loader:
                pending.append(run_batch(model, images, targets))
                bar.update(len(images))
                if len(pending) == args.save_every:
                    parts.write(pending)
                    pending = []
        if pending:
            parts.write(pending)
    arrays = parts.read(total)
    metric, value = score(arrays["logits"], arrays["targets"], full.multi_label)
    blocks = [int(block) for block in model.reducers]
    extraction = Extraction(
        model=config.model,
        method=config.method,
        keep_rate=config.r,
        reduction_loc=list(config.reduction_loc),
        blocks=blocks,
        dataset=manifest["dataset"],
        split=args.split,
        checkpoint=str(args.checkpoint),
        weights=weights,
        num_classes=full.num_classes,
        multi_label=full.multi_label,
        metric=metric,
        score=value,
        grid=model.patch_embed.grid_size[0],
        config=json.loads(config.to_json()),
        targets=arrays["targets"],
        logits=arrays["logits"].astype(np.float16),
        cls=arrays["cls"],
        **{name: [arrays[stage_key(s, name)] for s in range(len(blocks))] for name in STAGE_ARRAYS},
    )
    extraction.save(args.out)
    shutil.rmtree(parts.folder)
    log.info("wrote %s: %d images, %s %.2f", args.out, total, metric, value)
    return extraction


def main(argv: Sequence[str] | None = None) -> Extraction:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return extract(parse_args(argv))


if __name__ == "__main__":
    main()
