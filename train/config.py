"""The training configuration: one typed dataclass, its command line, and its JSON form in the run directory."""

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tokred
from tokred.reducers import parse_options
from train.presets import paper_preset


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric option: from ``low`` to ``high`` (None: unbounded), each end open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below and not math.isnan(value)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE_INT, NON_NEGATIVE = Range(1), Range(0)
FRACTION, PROBABILITY = Range(0, 1, high_open=True), Range(0, 1)


def option(default: Any, help: str, valid: Range | None = None, **extra: Any) -> Any:
    """A TrainConfig field: its default, its --help text, the Range its value must lie in (checked by parse_args)."""
    return field(default=default, metadata={"help": help, "valid": valid, **extra})


@dataclass
class TrainConfig:
    model: str = option("deit_tiny_patch16_224", "timm ViT name (DeiT-T/S/B: deit_{tiny,small,base}_patch16_224)")
    method: str = option("dpc_knn", "reduction method", choices=sorted(tokred.METHODS))
    method_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "an option of the method's reducer, typed from its signature, e.g. k_neighbors=3 (repeatable; "
            "the README's methods table lists them)",
            "flag": "--method-option",
        },
    )
    r: float = option(0.5, "keep rate r in (0, 1]; stage s keeps floor(196 r^s) tokens")
    reduction_loc: tuple[int, ...] = option((3, 6, 9), "blocks where the reduction stages sit")
    preset: str | None = option(
        None, "start from the study's settings for (dataset, method, r); options given override them", choices=["paper"]
    )
    dataset: str = option("demo", "dataset", choices=["demo", "imagenet", "nabirds", "coco", "nuswide"])
    data: str | None = option(None, "dataset root (the demo dataset needs none)")
    demo_train_size: int = option(4000, "demo dataset: training images", POSITIVE_INT)
    demo_test_size: int = option(500, "demo dataset: test images", POSITIVE_INT)
    pretrained: bool = option(False, "start from timm's pretrained weights (needs the network)")
    pretrained_path: str | None = option(None, "start from a local checkpoint (.pth or .safetensors)")
    epochs: int = option(3, "training epochs", POSITIVE_INT)
    batch_size: int = option(32, "batch per process (before accumulation)", POSITIVE_INT)
    global_batch: int | None = option(
        None, "total batch (batch × accumulation × processes); sets --accum-steps", POSITIVE_INT
    )
    accum_steps: int = option(1, "gradient accumulation steps per optimizer step", POSITIVE_INT)
    lr: float = option(1e-3, "base learning rate, scaled by total batch / lr_batch_normalizer", NON_NEGATIVE)
    lr_batch_normalizer: int = option(512, "batch size at which lr is used as given", POSITIVE_INT)
    min_lr: float = option(1e-5, "cosine schedule floor", NON_NEGATIVE)
    warmup_lr: float = option(1e-6, "learning rate at step 0 of the warm-up", NON_NEGATIVE)
    warmup_epochs: float = option(0.5, "linear warm-up length in epochs", NON_NEGATIVE)
    weight_decay: float = option(0.05, "AdamW weight decay (not on biases, norms, embeddings, tokens)", NON_NEGATIVE)
    backbone_lr_scale: float = option(1.0, "learning-rate factor of the backbone (new modules: 1)", NON_NEGATIVE)
    backbone_freeze_epochs: int = option(
        0, "epochs during which only new modules (and embeddings, head) train", NON_NEGATIVE
    )
    drop_path: float = option(0.1, "stochastic depth rate", FRACTION)
    repeated_aug: int = option(
        1, "repeated augmentation: times each sampled image appears per epoch (the study: 3)", POSITIVE_INT
    )
    mixup: float = option(0.0, "Mixup alpha (0: off)", NON_NEGATIVE)
    cutmix: float = option(0.0, "CutMix alpha (0: off)", NON_NEGATIVE)
    smoothing: float = option(0.0, "label smoothing (carried by the mixed targets when Mixup/CutMix is on)", FRACTION)
    aa: str | None = option(None, "RandAugment policy in timm's notation, e.g. rand-m9-mstd0.5-inc1 (none: off)")
    reprob: float = option(0.0, "random erasing probability (single-label datasets)", PROBABILITY)
    color_jitter: float = option(
        0.0, "colour jitter strength when no RandAugment is set (single-label datasets)", NON_NEGATIVE
    )
    cutout: float = option(0.0, "Cutout square side as a fraction of the image, always applied (0: off)", PROBABILITY)
    loss: str = option(
        "auto", "criterion; auto: asl for multi-label datasets, ce otherwise", choices=["auto", "ce", "asl", "bce"]
    )
    asl_gamma_neg: float = option(4.0, "ASL focusing exponent of negatives", NON_NEGATIVE)
    asl_gamma_pos: float = option(0.0, "ASL focusing exponent of positives", NON_NEGATIVE)
    asl_clip: float = option(0.05, "ASL probability margin of negatives", FRACTION)
    teacher: str = option(
        "auto",
        "DynamicViT distillation teacher: auto (the pretrained DeiT when --pretrained), none, or a checkpoint path",
    )
    clip_grad: float | None = option(
        None, "clip the gradient norm to this value (leave the option out: no clipping)", Range(0, low_open=True)
    )
    amp: str = option("none", "mixed precision", choices=["none", "bf16", "fp16"])
    ema_decay: float = option(0.0, "model EMA decay per optimizer step (0: no EMA)", FRACTION)
    heldout_fraction: float = option(
        0.0,
        "select the best checkpoint on this fraction of the training set (0: on the test split, as the study)",
        FRACTION,
    )
    seed: int = option(0, "random seed (each process adds its rank)", NON_NEGATIVE)
    workers: int = option(1, "data-loading worker processes per training process", NON_NEGATIVE)
    output_dir: str = option("runs", "folder of run directories")
    run_name: str | None = option(None, "run directory name (default: <model>_<method>_r<r>)")
    resume: str | None = option(None, "'auto' (the run's last checkpoint, if any) or a checkpoint path")
    eval_at_start: bool = option(True, "evaluate before training (logged; not in metrics.jsonl)")
    log_every: int = option(50, "log the training loss every this many optimizer steps", POSITIVE_INT)
    tensorboard: bool = option(False, "also write TensorBoard scalars to the run directory")
    checkpoint_every: int = option(
        200, "write the last checkpoint every this many optimizer steps (and each epoch)", POSITIVE_INT
    )
    eval_only: bool = option(False, "evaluate the --resume checkpoint and exit", flag="--eval")
    device: str | None = option(None, "cuda or cpu (default: cuda when available)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.run_name or f"{self.model}_{self.method}_r{self.r:g}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def build_parser(explicit_only: bool = False) -> argparse.ArgumentParser:
    """The command line of train/main.py, generated from TrainConfig (every field is an option).

    explicit_only: no defaults, so a parse holds only the options given on the command line.
    """
    parser = argparse.ArgumentParser(
        description="Fine-tune a token-reducing ViT. Run with python or torchrun (one or several processes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        name, valid = meta.pop("flag", flag(f.name)), meta.pop("valid", None)
        default = argparse.SUPPRESS if explicit_only else f.default
        help = meta.pop("help") + (f" ({valid})" if valid else "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help, **meta}
        if f.type in (bool, "bool"):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.name == "method_options":
            kwargs.update(action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS if explicit_only else [])
        elif f.name == "reduction_loc":
            kwargs.update(nargs="*", type=int)
        else:
            kwargs["type"] = next(t for t in (int, float, str) if t.__name__ in str(f.type))
        parser.add_argument(name, **kwargs)
    return parser


def flag(name: str) -> str:
    """The command-line option of a TrainConfig field."""
    meta = next(f.metadata for f in dataclasses.fields(TrainConfig) if f.name == name)
    return meta.get("flag", "--" + name.replace("_", "-"))


def check_ranges(config: TrainConfig) -> None:
    """ValueError naming the first option whose value lies outside its Range, and that range."""
    for f in dataclasses.fields(TrainConfig):
        valid, value = f.metadata.get("valid"), getattr(config, f.name)
        if valid is not None and value is not None and value not in valid:
            raise ValueError(f"argument {flag(f.name)}: {value:g} is not allowed, it must be {valid}")


def check_device(device: str | None) -> None:
    """ValueError unless ``device`` names a device type torch knows and, for CUDA, one is visible."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"argument --device: {device!r} is not a device torch knows (cuda, cpu, ...)") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"argument --device {device}: no CUDA device is visible to torch here; "
            "use --device cpu, or leave --device out to use a GPU when there is one"
        )


def set_accumulation(config: TrainConfig, given: set[str]) -> None:
    """accum_steps = global_batch / (batch_size × WORLD_SIZE); an --accum-steps given overrides a preset's batch."""
    if config.global_batch is None:
        return
    world = int(os.environ.get("WORLD_SIZE", 1))
    per_step = config.batch_size * world
    if "accum_steps" in given and "global_batch" not in given:
        config.global_batch = None
        return
    if config.global_batch < per_step or config.global_batch % per_step:
        raise ValueError(
            f"the global batch {config.global_batch} is not a multiple of --batch-size × processes "
            f"({config.batch_size} × {world} = {per_step}): pick a --batch-size that divides it, or set --global-batch"
        )
    if "accum_steps" in given and config.accum_steps * per_step != config.global_batch:
        raise ValueError(
            f"--accum-steps {config.accum_steps} with --batch-size {config.batch_size} × {world} processes does not "
            f"make --global-batch {config.global_batch}: give only one of --accum-steps and --global-batch"
        )
    config.accum_steps = config.global_batch // per_step


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line: `--preset paper` fills every option not given with the study's value."""
    return parse_command_line(argv)[0]


def parse_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """(the TrainConfig of a command line, the names of the fields given on it); argparse errors for bad values."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    given = set(vars(build_parser(explicit_only=True).parse_args(argv)))
    try:
        if args["preset"] == "paper":
            preset = paper_preset(args["dataset"], args["method"], args["r"])
            args.update({name: value for name, value in preset.items() if name not in given})
        options = parse_options(args["method"], args["method_options"])
        config = TrainConfig(**{**args, "reduction_loc": tuple(args["reduction_loc"]), "method_options": options})
        check_ranges(config)
        set_accumulation(config, given)
        check_device(config.device)
    except ValueError as error:
        parser.error(str(error))
    if config.eval_only and not config.resume:
        parser.error("--eval needs --resume CHECKPOINT")
    if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
        parser.error("Mixup/CutMix pairs images within a batch: use an even --batch-size")
    return config, given
