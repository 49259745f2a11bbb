"""Training criteria (SPEC §5.5, §6): cross-entropy variants, ASL for multi-label data, DynamicViT's loss with
its frozen teacher."""

import logging
from collections.abc import Callable
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import AsymmetricLossMultiLabel, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import Tensor, nn

import tokred
from train import checkpoint
from train.config import TrainConfig

log = logging.getLogger(__name__)

Criterion = Callable[[Any, Tensor, Tensor], Tensor]
"""criterion(model output, input images [B, 3, H, W], targets) → scalar loss."""


class Teacher(nn.Module):
    """A frozen plain ViT giving (logits [B, classes], final normed spatial tokens [B, N, C]) for distillation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "Teacher":
        return self  # always in eval mode

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.forward_features(images)
        return self.model.forward_head(features).float(), features[:, self.model.num_prefix_tokens :].float()


def load_teacher(config: TrainConfig, num_classes: int, device: torch.device, **timm_kwargs: object) -> Teacher | None:
    """DynamicViT's teacher (SPEC §3.4): a checkpoint path (a run of the unreduced model: its EMA weights when
    they were the best), or with "auto" the pretrained DeiT when training from pretrained ImageNet weights."""
    if config.method != "dynamicvit" or config.teacher == "none":
        return None
    if config.teacher == "auto":
        if not (config.pretrained or config.pretrained_path) or config.dataset != "imagenet":
            log.warning(
                "DynamicViT trains without distillation: pass --teacher CHECKPOINT (a run of the unreduced "
                "model on this dataset, as the study did) or --teacher none to silence this"
            )
            return None
        model = tokred.create_backbone(
            config.model, pretrained=True, pretrained_path=config.pretrained_path, **timm_kwargs
        )
    else:
        weights, _ = checkpoint.Checkpoint.load(config.teacher).weights("best")
        model = tokred.create_backbone(config.model, num_classes=num_classes, **timm_kwargs)
        backbone = {k: v for k, v in weights.items() if not k.startswith("reducers.")}
        try:
            model.load_state_dict(backbone)
        except RuntimeError as error:
            raise ValueError(
                f"--teacher {config.teacher} does not hold {config.model} weights for {num_classes} classes: {error}"
            ) from error
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(f"the teacher predicts {model.num_classes} classes, the dataset has {num_classes}")
    return Teacher(model).to(device)


def base_criterion(config: TrainConfig, multi_label: bool, mixup: bool) -> nn.Module:
    """The dataset's criterion: soft-target CE under Mixup/CutMix, (label-smoothed) CE, ASL or BCE."""
    kind = config.loss if config.loss != "auto" else "asl" if multi_label else "ce"
    if (kind in ("asl", "bce")) != multi_label:
        raise ValueError(f"--loss {kind} does not fit {'multi-label' if multi_label else 'single-label'} data")
    if kind == "asl":  # the study's reduction: a sum over batch and classes
        return AsymmetricLossMultiLabel(config.asl_gamma_neg, config.asl_gamma_pos, config.asl_clip, reduction="sum")
    if kind == "bce":
        return nn.BCEWithLogitsLoss()
    if mixup:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(config.smoothing) if config.smoothing > 0 else nn.CrossEntropyLoss()


def training_loss(
    config: TrainConfig, bare: nn.Module, num_classes: int, multi_label: bool, teacher: Teacher | None = None
) -> tuple[Mixup | None, Criterion]:
    """(Mixup/CutMix or None, criterion); DynamicViT's loss wraps the base criterion (its output is then
    (logits, aux)) and distils from ``teacher`` when given."""
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        if multi_label:
            raise ValueError("Mixup/CutMix need single-label data: pass --mixup 0 --cutmix 0")
        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.smoothing,
            num_classes=num_classes,
        )
    base = base_criterion(config, multi_label, mixup is not None)
    if isinstance(bare, tokred.ReducingVisionTransformer) and bare.method == "dynamicvit":
        dynamicvit = tokred.DynamicViTLoss(base, bare.keep_ratios)

        def distilled(output: tuple[Tensor, dict], images: Tensor, targets: Tensor) -> Tensor:
            return dynamicvit(output[0].float(), output[1], targets, teacher(images) if teacher else None)

        return mixup, distilled
    return mixup, lambda output, images, targets: base(output.float(), targets)
