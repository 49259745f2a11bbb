"""Parameter groups and the learning-rate schedule against SPEC §5.2–5.3."""

import math

import pytest
import timm

import tokred
from train import optim
from train.config import parse_args


def model_and_optimizer(*args: str, steps_per_epoch: int = 10, world: int = 1):
    config = parse_args(
        [
            "--epochs",
            "4",
            "--warmup-epochs",
            "1",
            "--lr",
            "4e-3",
            "--lr-batch-normalizer",
            "64",
            "--batch-size",
            "16",
            "--accum-steps",
            "2",
            *args,
        ]
    )
    model = tokred.patch(timm.create_model("vit_tiny_patch16_224", depth=4, num_classes=5), "dpc_knn", 0.5, (1, 2))
    optimizer, scheduler, lr = optim.build(model, config, steps_per_epoch, world)
    return config, model, optimizer, scheduler, lr


def expected_lr(
    t: int, base: float, warmup_t: int = 10, total: int = 40, warmup_lr: float = 1e-6, floor: float = 1e-5
) -> float:
    if t < warmup_t:
        return warmup_lr + t * (base - warmup_lr) / warmup_t
    if t >= total:
        return floor
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / total))  # t not shifted by the warm-up


def test_lr_scaling_and_schedule():
    _, _, optimizer, scheduler, lr = model_and_optimizer("--backbone-lr-scale", "0.1", world=2)
    assert lr == pytest.approx(4e-3 * (16 * 2 * 2) / 64)  # batch × accumulation × processes / normaliser
    for t in (0, 3, 9, 10, 17, 25, 39, 40, 55):
        scheduler.step_update(t)
        for group in optimizer.param_groups:
            base = lr * (0.1 if group["backbone"] else 1.0)
            assert group["lr"] == pytest.approx(expected_lr(t, base), rel=1e-9), (t, group["backbone"])


def test_groups():
    _, model, optimizer, _, _ = model_and_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {
        (g["backbone"], g["weight_decay"] > 0): {names[id(p)] for p in g["params"]} for g in optimizer.param_groups
    }
    new_decay, backbone_no_decay = by_group[(False, True)], by_group[(True, False)]
    assert (
        "head.weight" in new_decay and "reducers.1.score.weight" in new_decay and "patch_embed.proj.weight" in new_decay
    )
    assert {"cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= backbone_no_decay
    assert "pos_embed" in by_group[(False, False)]  # new, never decayed
    assert "blocks.0.mlp.fc1.weight" in by_group[(True, True)]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_backbone_freeze_zeroes_backbone_lr():
    config, _, optimizer, scheduler, _ = model_and_optimizer("--backbone-freeze-epochs", "1")
    scheduler.step_update(12)
    optim.freeze_backbone(optimizer, 0, config)
    assert all((g["lr"] == 0) == g["backbone"] for g in optimizer.param_groups)
    scheduler.step_update(13)
    optim.freeze_backbone(optimizer, 1, config)
    assert all(g["lr"] > 0 for g in optimizer.param_groups)
