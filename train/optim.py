"""Parameter groups, AdamW and the cosine schedule in optimizer steps (SPEC §5.2, §5.3)."""

import torch
from timm.scheduler import CosineLRScheduler

from train.config import TrainConfig

NEW_MODULES = ("head.", "pos_embed", "patch_embed", "reducers.")


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """new (head, embeddings, reducers: full LR, never frozen) and backbone (scaled LR, frozen for
    backbone_freeze_epochs), each split into decay / no-decay (1-D tensors, biases, no_weight_decay())."""
    skip = set(getattr(model, "no_weight_decay", set)())
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        new = any(name.startswith(m) or f".{m}" in name for m in NEW_MODULES)
        decay = param.ndim > 1 and not name.endswith(".bias") and name not in skip
        groups.setdefault((new, decay), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr_factor": 1.0 if new else config.backbone_lr_scale,
            "backbone": not new,
        }
        for (new, decay), params in sorted(groups.items())
    ]


def build(model: torch.nn.Module, config: TrainConfig, steps_per_epoch: int, world: int):
    """(optimizer, scheduler, effective lr): lr scaled by total batch / normaliser; t counts optimizer steps."""
    total_batch = config.batch_size * config.accum_steps * world
    lr = config.lr * total_batch / config.lr_batch_normalizer
    groups = param_groups(model, config)
    for group in groups:  # each group's base lr η_g; the schedule's floor min_lr is the same for all (SPEC §5.3)
        group["lr"] = lr * group["lr_factor"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=config.epochs * steps_per_epoch,
        lr_min=config.min_lr,
        warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=config.warmup_lr,
        t_in_epochs=False,
    )
    return optimizer, scheduler, lr


def freeze_backbone(optimizer: torch.optim.Optimizer, epoch: int, config: TrainConfig) -> None:
    """The study's freeze: backbone groups get lr 0 before each step while epoch < backbone_freeze_epochs."""
    if epoch < config.backbone_freeze_epochs:
        for group in optimizer.param_groups:
            if group["backbone"]:
                group["lr"] = 0.0
