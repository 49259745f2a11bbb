"""One training epoch and one evaluation (SPEC §5.4, §5.6)."""

import math
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import tokred
from train import optim
from train.checkpoint import Progress
from train.config import TrainConfig
from train.distributed import all_reduce_sum, gather_in_order
from train.losses import Criterion
from train.metrics import mean_average_precision


def reseed(config: TrainConfig, rank: int, step: int) -> None:
    """Random streams (drop path, Gumbel, DPC-KNN noise) as a function of (seed, rank, step): a resumed run
    draws what the uninterrupted run drew, with no generator state to save."""
    seed = (config.seed * 1_000_003 + rank) * 1_000_003 + step
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy


def autocast(config: TrainConfig, device: torch.device):
    if config.amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)


def train_one_epoch(
    model: nn.Module,
    bare: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    ema: nn.Module | None,
    loss: tuple[Mixup | None, Criterion],
    config: TrainConfig,
    progress: Progress,
    rank: int,
    on_step: Callable[[Progress, dict[str, float] | None], None],
) -> float:
    """Train until the loader is exhausted; ``bare`` is the model without its DDP wrapper, ``loss`` what
    :func:`train.losses.training_loss` returns. After each optimizer step calls ``on_step(progress, scalars)``
    with the mean loss and lr since the last report every ``log_every`` / ``checkpoint_every`` steps (None
    otherwise: the loss stays on the device between reports). The loss read back accumulates in ``progress``
    (loss_sum, loss_count), so a resumed epoch's mean covers the steps before the resume too. Returns the
    epoch's mean loss."""
    model.train()
    device = next(bare.parameters()).device
    mixup, criterion = loss
    dynamicvit = isinstance(bare, tokred.ReducingVisionTransformer) and bare.method == "dynamicvit"
    running = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum and micro-batches since the report
    bar = tqdm(loader, desc=f"epoch {progress.epoch}", disable=rank != 0, leave=False, initial=progress.micro)
    for images, targets in bar:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        boundary = (progress.micro + 1) % config.accum_steps == 0
        sync = nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(config, device):
                output = model(images, aux=True) if dynamicvit else model(images)
                value = criterion(output, images, targets)
            scaler.scale(value / config.accum_steps).backward()
        progress.micro += 1
        running += torch.stack([value.detach().double(), torch.ones((), dtype=torch.float64, device=device)])
        if not boundary:
            continue
        optim.freeze_backbone(optimizer, progress.epoch, config)
        if config.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(bare.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        if ema is not None:
            ema.update(bare, step=progress.step)
        scheduler.step_update(progress.step)
        reseed(config, rank, progress.step)
        scalars = None
        if progress.step % config.log_every == 0 or progress.step % config.checkpoint_every == 0:
            loss_sum, micro = read_loss(running, progress, config, f"before step {progress.step}")
            scalars = {"train_loss": loss_sum / micro, "lr": optimizer.param_groups[-1]["lr"]}
            bar.set_postfix(loss=f"{scalars['train_loss']:.3f}", lr=f"{scalars['lr']:.2e}")
        on_step(progress, scalars)
    read_loss(running, progress, config, f"in epoch {progress.epoch}")
    return progress.loss_sum / max(progress.loss_count, 1)


def read_loss(running: torch.Tensor, progress: Progress, config: TrainConfig, when: str) -> tuple[float, int]:
    """(loss sum, micro-batches) since the last read, from ``running`` [2] on the device (then zeroed), added to
    the epoch's sums in ``progress``; FloatingPointError naming the remedies when the loss is not finite."""
    loss_sum, micro = running.tolist()
    running.zero_()
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"the loss became {loss_sum} {when}: try {non_finite_remedies(config)}")
    progress.loss_sum, progress.loss_count = progress.loss_sum + loss_sum, progress.loss_count + int(micro)
    return loss_sum, int(micro)


def non_finite_remedies(config: TrainConfig) -> str:
    """What can make the loss of this configuration finite again, as options to pass."""
    remedies = [f"a lower --lr than {config.lr:g}"]
    if config.amp == "fp16":
        remedies.insert(0, "--amp bf16 (or --amp none) instead of fp16, whose range overflows")
    if config.clip_grad is None:
        remedies.append("--clip-grad 1.0")
    return ", ".join(remedies)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, config: TrainConfig, rank: int, multi_label: bool = False
) -> dict[str, float]:
    """Over the whole split, exact across processes: loss, top-1 and top-5 accuracy (%) for single-label data,
    mAP (%) for multi-label data (sigmoid scores of every image, gathered in dataset order)."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, top-5, images
    scores, labels = [], []
    for images, targets in tqdm(loader, desc="eval", disable=rank != 0, leave=False):
        images, targets = images.to(device), targets.to(device)
        with autocast(config, device):
            logits = model(images).float()
        if multi_label:
            scores.append(logits.sigmoid().cpu())
            labels.append(targets.cpu())
            continue
        top5 = logits.topk(min(5, logits.shape[1]), dim=-1).indices
        hits = top5 == targets[:, None]
        sums += torch.stack(
            [
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(-1).sum().double(),
                torch.tensor(float(len(targets)), device=device, dtype=torch.float64),
            ]
        )
    if multi_label:
        all_scores, all_labels = gather_in_order(torch.cat(scores)), gather_in_order(torch.cat(labels))
        return {"map": mean_average_precision(all_scores, all_labels), "images": float(len(all_scores))}
    loss, top1, top5, n = all_reduce_sum(sums).tolist()
    return {"loss": loss / n, "acc1": 100 * top1 / n, "acc5": 100 * top5 / n, "images": n}
