"""The sweep's command line and its loop: build each configuration, score it, time it, record it."""

import argparse
import copy
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import tokred
from tokred.models import read_state_dict
from tokred.reducers import METHODS, build_reducers, learned
from tokred.sweep.page import write_page
from tokred.sweep.plot import write_figure
from tokred.sweep.results import UNREDUCED, Config, Row, append_row, check_settings, read_rows
from tokred.timing import forward_pass, measure

try:  # the repository's training and analysis code: the sweep runs from the repository root, as they do
    from analysis.extract import build_model, load_checkpoint, score
    from train.config import TrainConfig, check_device
    from train.data import DATASETS, build_transform, load_dataset
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        f"python -m tokred.sweep uses the repository's train/ and analysis/ ({error}): run it from the root of a "
        "tokred checkout"
    ) from error

log = logging.getLogger("tokred.sweep")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tokred.sweep",
        description="Accuracy against speed of token-reduction methods and keep rates on one backbone: "
        "OUT/sweep.csv, OUT/pareto.png/.pdf and OUT/index.html. Resumable: a rerun skips finished rows.",
    )
    parser.add_argument("--model", default="deit_tiny_patch16_224", help="timm ViT name (default: %(default)s)")
    parser.add_argument(
        "--pretrained-path",
        metavar="P",
        help="the backbone's weights (.pth or .safetensors; default: random weights from --seed)",
    )
    parser.add_argument("--dataset", default="demo", choices=["demo", *DATASETS], help="(default: %(default)s)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (the demo dataset needs none)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        metavar="METHOD",
        help=f"methods to sweep, of {' '.join(METHODS)} (default: every method without learned parameters); a "
        "method with learned parameters needs --checkpoints of it",
    )
    parser.add_argument(
        "--rates",
        nargs="+",
        type=float,
        default=[0.5, 0.7],
        metavar="R",
        help="keep rates in (0, 1] (default: 0.5 0.7)",
    )
    parser.add_argument("--loc", nargs="+", type=int, default=[3, 6, 9], help="reduction blocks (default: 3 6 9)")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        default=[],
        metavar="CKPT",
        help="checkpoints of train/main.py (runs/<run>/best_checkpoint.pth): one configuration each, its own "
        "method and r",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=64,
        metavar="N",
        help="evaluation images (0: the whole split; default: %(default)s)",
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="batch of the evaluation and the throughput (default: %(default)s)"
    )
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="random weights and demo images (default: %(default)s)")
    parser.add_argument(
        "--min-time", type=float, default=0.5, help="seconds of timing per configuration and batch size (default: 0.5)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the results")
    args = parser.parse_args(argv)
    if bad := [r for r in args.rates if not 0 < r <= 1]:
        parser.error(f"--rates {' '.join(map(str, bad))}: a keep rate must lie in (0, 1]")
    if args.limit < 0 or args.workers < 0 or args.min_time < 0 or args.batch < 1 or (args.threads or 1) < 1:
        parser.error("--limit, --workers and --min-time must be at least 0, --batch and --threads at least 1")
    if args.dataset != "demo" and args.data is None:
        parser.error(f"--dataset {args.dataset} needs --data ROOT, the dataset's folder")
    if args.data is not None and not Path(args.data).is_dir():
        parser.error(f"--data {args.data} is not a folder: pass the dataset's root")
    if args.pretrained_path is not None and not Path(args.pretrained_path).is_file():
        parser.error(f"--pretrained-path {args.pretrained_path} is not a file")
    return args


def settings(args: argparse.Namespace) -> dict[str, object]:
    """What every row of a sweep folder shares: a rerun must give the same to continue it."""
    keys = ("model", "pretrained_path", "dataset", "data", "loc", "limit", "batch", "seed", "threads")
    return {key: getattr(args, key) for key in keys} | {"device": str(args.device)}


def eval_split(args: argparse.Namespace) -> Dataset:
    """The evaluation split with the evaluation transform; ``--limit`` images spread evenly over it (the demo
    makes exactly that many)."""
    length = args.limit or None
    transform = build_transform(args.dataset, False, None, 0.0, 0.0, 0.0)
    dataset = load_dataset(args.dataset, args.data, "eval", transform, demo_length=length, seed=args.seed)
    if length is not None and length < len(dataset):
        return Subset(dataset, [i * len(dataset) // length for i in range(length)])
    return dataset


def backbone(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, str, bool]:
    """(the plain model every parameter-free configuration starts from, its weights in words, whether its
    accuracy is that of untrained weights: random, or a classifier newly made for this dataset's classes).

    A ``--pretrained-path`` whose classifier fits the dataset (e.g. a best_checkpoint.pth of train/main.py, its
    ``reducers.*`` left out) is loaded whole; otherwise timm's loader reads it and makes a new classifier.
    """
    torch.manual_seed(args.seed)
    path = args.pretrained_path
    if path is None:
        return tokred.create_backbone(args.model, num_classes=num_classes), f"random (seed {args.seed})", True
    state = read_state_dict(path)
    head = state.get("head.weight")
    if head is None or head.shape[0] != num_classes:
        log.warning(
            "%s has no %d-class classifier for %s: the classifier is new (random), so the accuracies are chance level",
            path,
            num_classes,
            args.dataset,
        )
        model = tokred.create_backbone(args.model, pretrained_path=path, num_classes=num_classes)
        return model, f"{path} (new random classifier)", True
    model = tokred.create_backbone(args.model, num_classes=num_classes)
    try:
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("reducers.")})
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit {args.model} with {num_classes} classes: {error}") from error
    return model, path, False


def reducers(method: str, model: nn.Module, r: float, loc: Sequence[int]) -> nn.ModuleDict:
    """The stages ``method`` would add to ``model`` (errors naming what is wrong with r or loc)."""
    return build_reducers(method, model.embed_dim, model.patch_embed.num_patches, len(model.blocks), r, loc, {})


def learned_methods() -> set[str]:
    """The methods whose reducers have parameters of their own (they need training)."""
    return {m for m in METHODS if learned(m)}


def plan(args: argparse.Namespace, base: nn.Module, trained: dict[Config, TrainConfig]) -> list[Config]:
    """The configurations of the sweep: the unreduced model, every parameter-free method at every rate, and the
    checkpoints; a learned method without a checkpoint is refused (ValueError saying what to pass)."""
    needs_training = learned_methods()
    methods = args.methods or [m for m in METHODS if m not in needs_training]
    missing = [m for m in methods if m in needs_training and all(c.method != m for c in trained)]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} learn parameters of their own, which untrained reducers lack: pass --checkpoints "
            f"runs/<run>/best_checkpoint.pth of a run of train/main.py --method {missing[0]} (one per keep rate), "
            "or leave them out of --methods"
        )
    if needs_training & set(methods):
        log.info("%s: the keep rates are their checkpoints' own", ", ".join(sorted(needs_training & set(methods))))
    configs = [Config(UNREDUCED, 1.0)]
    for method in methods:
        if method not in needs_training:
            for r in args.rates:
                reducers(method, base, r, args.loc)  # an emptied stage is refused now, naming the r
                configs.append(Config(method, r))
    return configs + list(trained)


def load_checkpoints(args: argparse.Namespace) -> dict[Config, tuple[TrainConfig, dict[str, torch.Tensor], str]]:
    """Each checkpoint's configuration → (its training configuration, weights, which weights); one of another
    model or dataset than the sweep's is refused."""
    found = {}
    for path in args.checkpoints:
        config, state_dict, which = load_checkpoint(path, "auto")
        if (config.model, config.dataset) != (args.model, args.dataset):
            raise ValueError(
                f"{path} is a {config.model} trained on {config.dataset}; this sweep is of {args.model} on "
                f"{args.dataset}: pass --model {config.model} --dataset {config.dataset}, or leave it out"
            )
        found[Config(config.method, config.r, str(path))] = (config, state_dict, which)
    return found


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, multi_label: bool
) -> tuple[str, float, str]:
    """(metric, score %, mean spatial tokens after each stage as "98/49/24") of ``model`` over ``loader``."""
    logits, targets, counts = [], [], []
    for images, target in loader:
        if isinstance(model, tokred.ReducingVisionTransformer):
            output, trace = model(images.to(device), trace=True)
            counts.append(torch.stack([stage.token_counts.double().sum() for stage in trace.stages]).cpu())
        else:
            output = model(images.to(device))
        logits.append(output.float().cpu())
        targets.append(target)
    metric, value = score(torch.cat(logits).numpy(), torch.cat(targets).numpy(), multi_label)
    images = sum(len(t) for t in targets)
    means = (torch.stack(counts).sum(0) / images).tolist() if counts else [model.patch_embed.num_patches]
    return metric, value, "/".join(f"{m:.4g}" for m in means)


def device_name(device: torch.device) -> str:
    """The device in words, for the figure's axis and the page."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' * (threads > 1)}"


def sweep(args: argparse.Namespace) -> Path:
    """Run every configuration not yet in ``args.out``'s sweep.csv, then draw the figure and write the page."""
    check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = device.type if device.index is None else str(device)
    dataset = eval_split(args)
    full = dataset.dataset if isinstance(dataset, Subset) else dataset
    checkpoints = load_checkpoints(args)
    base, weights, random = backbone(args, full.num_classes)
    configs = plan(args, base, {c: v[0] for c, v in checkpoints.items()})
    if random:
        log.warning("%s weights: the accuracies are chance level, the speeds are real", weights)
    check_settings(args.out, settings(args))
    done = {row.config for row in read_rows(args.out)}
    pending = [c for c in configs if c not in done]
    log.info(
        "%d configurations, %d done before, %d to run on %s",
        len(configs),
        len(configs) - len(pending),
        len(pending),
        device_name(device),
    )
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = DataLoader(dataset, args.batch, num_workers=args.workers)
    if args.limit:  # --limit images are made or read once, not once per configuration
        loader = list(loader)
    timed = next(iter(loader))[0].to(device)
    base = base.to(device).eval()
    for config in tqdm(pending, desc="sweep", unit="config", file=sys.stderr):
        row_weights, row_random = weights, random
        if config.checkpoint:
            train_config, state_dict, which = checkpoints[config]
            model = build_model(train_config, state_dict, full.num_classes).to(device)
            row_weights, row_random = f"{config.checkpoint} ({which})", False
        elif config.method == UNREDUCED:
            model = base
        else:
            model = tokred.patch(copy.deepcopy(base), config.method, config.r, args.loc).eval()
        metric, value, tokens = evaluate(model, loader, device, full.multi_label)
        pair = {"model": forward_pass(model, timed)} | ({} if model is base else {"base": forward_pass(base, timed)})
        ms = measure(pair, device, args.min_time)
        latency = measure({"model": forward_pass(model, timed[:1])}, device, args.min_time)["model"]
        row = Row(
            method=config.method,
            r=config.r,
            checkpoint=config.checkpoint,
            weights=row_weights,
            random_weights=row_random,
            model=args.model,
            dataset=args.dataset,
            metric=metric,
            score=value,
            images=len(dataset),
            images_per_s=len(timed) / ms["model"] * 1e3,
            batch=len(timed),
            latency_ms=latency,
            speedup=ms["base"] / ms["model"] if "base" in ms else 1.0,
            tokens=tokens,
            device=device_name(device),
        )
        append_row(args.out, row)
        log.info(
            "%s: %s %.2f, %.1f images/s, %.1f ms at batch 1", config.label, metric, value, row.images_per_s, latency
        )
    rows = [row for row in read_rows(args.out) if row.config in set(configs)]
    write_figure(rows, args.out)
    return write_page(rows, args.out, settings(args))


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    try:
        page = sweep(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"python -m tokred.sweep: error: {error}") from error
    log.info("wrote %s", page)
    return page
