"""The training configuration: one typed dataclass, its command line, and its JSON form in the run directory."""

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokred
from train.presets import paper_preset


def option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    model: str = option("deit_tiny_patch16_224", "timm ViT name (DeiT-T/S/B: deit_{tiny,small,base}_patch16_224)")
    method: str = option("dpc_knn", "reduction method", choices=sorted(tokred.METHODS))
    r: float = option(0.5, "keep rate r in (0, 1]; stage s keeps floor(196 r^s) tokens")
    reduction_loc: tuple[int, ...] = option((3, 6, 9), "blocks where the reduction stages sit")
    preset: str | None = option(
        None, "start from the study's settings for (dataset, method, r); options given override them", choices=["paper"]
    )
    dataset: str = option("demo", "dataset", choices=["demo", "imagenet", "nabirds", "coco", "nuswide"])
    data: str | None = option(None, "dataset root (the demo dataset needs none)")
    demo_train_size: int = option(4000, "demo dataset: training images")
    demo_test_size: int = option(500, "demo dataset: test images")
    pretrained: bool = option(False, "start from timm's pretrained weights (needs the network)")
    pretrained_path: str | None = option(None, "start from a local checkpoint (.pth or .safetensors)")
    epochs: int = option(3, "training epochs")
    batch_size: int = option(32, "batch per process (before accumulation)")
    global_batch: int | None = option(None, "total batch (batch × accumulation × processes); sets --accum-steps")
    accum_steps: int = option(1, "gradient accumulation steps per optimizer step")
    lr: float = option(1e-3, "base learning rate, scaled by total batch / lr_batch_normalizer")
    lr_batch_normalizer: int = option(512, "batch size at which lr is used as given")
    min_lr: float = option(1e-5, "cosine schedule floor")
    warmup_lr: float = option(1e-6, "learning rate at step 0 of the warm-up")
    warmup_epochs: float = option(0.5, "linear warm-up length in epochs")
    weight_decay: float = option(0.05, "AdamW weight decay (not on biases, norms, embeddings, tokens)")
    backbone_lr_scale: float = option(1.0, "learning-rate factor of the backbone (new modules: 1)")
    backbone_freeze_epochs: int = option(0, "epochs during which only new modules (and embeddings, head) train")
    drop_path: float = option(0.1, "stochastic depth rate")
    repeated_aug: int = option(1, "repeated augmentation: times each sampled image appears per epoch (the study: 3)")
    mixup: float = option(0.0, "Mixup alpha (0: off)")
    cutmix: float = option(0.0, "CutMix alpha (0: off)")
    smoothing: float = option(0.0, "label smoothing (carried by the mixed targets when Mixup/CutMix is on)")
    aa: str | None = option(None, "RandAugment policy in timm's notation, e.g. rand-m9-mstd0.5-inc1 (none: off)")
    reprob: float = option(0.0, "random erasing probability (single-label datasets)")
    color_jitter: float = option(0.0, "colour jitter strength when no RandAugment is set (single-label datasets)")
    cutout: float = option(0.0, "Cutout square side as a fraction of the image, always applied (0: off)")
    loss: str = option(
        "auto", "criterion; auto: asl for multi-label datasets, ce otherwise", choices=["auto", "ce", "asl", "bce"]
    )
    asl_gamma_neg: float = option(4.0, "ASL focusing exponent of negatives")
    asl_gamma_pos: float = option(0.0, "ASL focusing exponent of positives")
    asl_clip: float = option(0.05, "ASL probability margin of negatives")
    teacher: str = option(
        "auto",
        "DynamicViT distillation teacher: auto (the pretrained DeiT when --pretrained), none, or a checkpoint path",
    )
    clip_grad: float | None = option(None, "clip the gradient norm to this value")
    amp: str = option("none", "mixed precision", choices=["none", "bf16", "fp16"])
    ema_decay: float = option(0.0, "model EMA decay per optimizer step (0: no EMA)")
    heldout_fraction: float = option(
        0.0, "select the best checkpoint on this fraction of the training set (0: on the test split, as the study)"
    )
    seed: int = option(0, "random seed (each process adds its rank)")
    workers: int = option(1, "data-loading worker processes per training process")
    output_dir: str = option("runs", "folder of run directories")
    run_name: str | None = option(None, "run directory name (default: <model>_<method>_r<r>)")
    resume: str | None = option(None, "'auto' (the run's last checkpoint, if any) or a checkpoint path")
    eval_at_start: bool = option(True, "evaluate before training (logged; not in metrics.jsonl)")
    log_every: int = option(50, "log the training loss every this many optimizer steps")
    tensorboard: bool = option(False, "also write TensorBoard scalars to the run directory")
    checkpoint_every: int = option(200, "write the last checkpoint every this many optimizer steps (and each epoch)")
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
        name = meta.pop("flag", "--" + f.name.replace("_", "-"))
        default = argparse.SUPPRESS if explicit_only else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta.pop("help"), **meta}
        if f.type in (bool, "bool"):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.name == "reduction_loc":
            kwargs.update(nargs="*", type=int)
        else:
            kwargs["type"] = next(t for t in (int, float, str) if t.__name__ in str(f.type))
        parser.add_argument(name, **kwargs)
    return parser


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
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    given = set(vars(build_parser(explicit_only=True).parse_args(argv)))
    try:
        if args["preset"] == "paper":
            preset = paper_preset(args["dataset"], args["method"], args["r"])
            args.update({name: value for name, value in preset.items() if name not in given})
        config = TrainConfig(**{**args, "reduction_loc": tuple(args["reduction_loc"])})
        set_accumulation(config, given)
    except ValueError as error:
        parser.error(str(error))
    if config.eval_only and not config.resume:
        parser.error("--eval needs --resume CHECKPOINT")
    if min(config.accum_steps, config.batch_size, config.epochs, config.repeated_aug) < 1:
        parser.error("--batch-size, --accum-steps, --epochs and --repeated-aug must be at least 1")
    if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
        parser.error("Mixup/CutMix pairs images within a batch: use an even --batch-size")
    return config
