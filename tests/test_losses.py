"""Training criteria and evaluation metrics: ASL, label smoothing, Mixup targets, DynamicViT's teacher, mAP."""

import math

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import average_precision_score

import tokred
from train.config import parse_args
from train.losses import Teacher, load_teacher, training_loss
from train.metrics import average_precision, mean_average_precision


def test_asl_by_hand():
    """One positive at p = σ(0) and one negative at p = σ(2), γ⁻ = 4, γ⁺ = 0, clip 0.05 (SPEC §5.5)."""
    _, asl = training_loss(parse_args(["--loss", "asl"]), torch.nn.Identity(), 2, multi_label=True)
    p_neg = min(1.0, 1 - 1 / (1 + math.exp(-2.0)) + 0.05)
    by_hand = -math.log(0.5) - math.log(p_neg) * (1 - p_neg) ** 4
    value = asl(torch.tensor([[0.0, 2.0]]), None, torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx(by_hand, rel=1e-6)


def test_asl_sums_over_batch_and_classes(cpu_rng):
    """The study's reduction: the sum of the per-element loss written out from SPEC §5.5 in float64."""
    logits, targets = torch.randn(6, 5, generator=cpu_rng) * 3, (torch.rand(6, 5, generator=cpu_rng) < 0.3).float()
    _, asl = training_loss(parse_args(["--loss", "asl", "--asl-gamma-neg", "2", "--asl-clip", "0.1"]), None, 5, True)
    z, y = logits.double(), targets.double()
    p = z.sigmoid()
    p_neg = (1 - p + 0.1).clamp(max=1)
    by_hand = -(y * p.clamp(min=1e-8).log() + (1 - y) * p_neg.clamp(min=1e-8).log() * (1 - p_neg) ** 2).sum()
    torch.testing.assert_close(asl(logits, None, targets).double(), by_hand, rtol=1e-5, atol=1e-5)


def test_criterion_must_fit_the_labels():
    with pytest.raises(ValueError, match="multi-label"):
        training_loss(parse_args(["--loss", "ce"]), None, 5, multi_label=True)
    with pytest.raises(ValueError, match="single-label"):
        training_loss(parse_args(["--loss", "asl"]), None, 5, multi_label=False)
    with pytest.raises(ValueError, match="Mixup"):
        training_loss(parse_args(["--mixup", "0.8"]), None, 5, multi_label=True)


def test_label_smoothing_and_mixup_targets():
    """Label smoothing: (1 - ε) NLL + ε mean(-log p); Mixup/CutMix: soft targets that carry the smoothing."""
    logits, targets = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    _, smoothed = training_loss(parse_args(["--smoothing", "0.1"]), None, 10, False)
    log_p = logits.log_softmax(-1)
    by_hand = (0.9 * -log_p[range(4), targets] + 0.1 * -log_p.mean(-1)).mean()
    torch.testing.assert_close(smoothed(logits, None, targets), by_hand)
    mixup, soft = training_loss(parse_args(["--mixup", "0.8", "--smoothing", "0.1"]), None, 10, False)
    _, mixed = mixup(torch.randn(4, 3, 8, 8), targets)
    assert mixed.shape == (4, 10) and torch.allclose(mixed.sum(-1), torch.ones(4)) and mixed.min() > 0
    torch.testing.assert_close(soft(logits, None, mixed), (-mixed * log_p).sum(-1).mean())


def test_average_precision_by_hand():
    """Class 0: positives at ranks 1 and 3 → (1/1 + 2/3) / 2; class 1: no positive → 0; class 2: the only
    positive ranked last of four → 1/4."""
    scores = torch.tensor([[0.9, 0.1, 0.8], [0.8, 0.2, 0.7], [0.7, 0.3, 0.6], [0.6, 0.4, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]])
    ap = average_precision(scores, targets)
    torch.testing.assert_close(ap, torch.tensor([5 / 6, 0.0, 0.25], dtype=torch.float64), rtol=0, atol=1e-7)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (5 / 6 + 0.25) / 3)


def test_average_precision_matches_scikit_learn(cpu_rng):
    """Without tied scores the non-interpolated AP is scikit-learn's average precision."""
    scores, targets = torch.rand(200, 7, generator=cpu_rng), (torch.rand(200, 7, generator=cpu_rng) < 0.2).long()
    expected = [average_precision_score(targets[:, c].numpy(), scores[:, c].numpy()) for c in range(7)]
    np.testing.assert_allclose(average_precision(scores, targets).numpy(), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="must both be"):
        average_precision(scores, targets[:, :3])


def small_vit(num_classes: int = 10) -> torch.nn.Module:
    return timm.create_model("deit_tiny_patch16_224", num_classes=num_classes, img_size=32, patch_size=8)


def test_dynamicvit_distils_from_its_teacher(cpu_rng):
    """The criterion adds the teacher's KL and token terms: equal to DynamicViTLoss given the teacher's outputs."""
    torch.manual_seed(0)
    model = tokred.create_model(
        "deit_tiny_patch16_224", "dynamicvit", 0.7, num_classes=10, img_size=32, patch_size=8
    ).train()
    teacher = Teacher(small_vit())
    _, criterion = training_loss(parse_args(["--method", "dynamicvit"]), model, 10, False, teacher)
    images, targets = torch.randn(3, 3, 32, 32, generator=cpu_rng), torch.tensor([1, 2, 3])
    torch.manual_seed(1)
    output = model(images, aux=True)
    features = teacher.model.forward_features(images)
    expected = tokred.DynamicViTLoss(torch.nn.CrossEntropyLoss(), model.keep_ratios)(
        output[0], output[1], targets, (teacher.model.forward_head(features), features[:, 1:])
    )
    without = tokred.DynamicViTLoss(torch.nn.CrossEntropyLoss(), model.keep_ratios)(output[0], output[1], targets)
    value = criterion(output, images, targets)
    torch.testing.assert_close(value, expected)
    assert not torch.allclose(value, without)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training


def test_teacher_checkpoint_uses_the_best_weights(tmp_path):
    """A run's checkpoint: the EMA weights when the EMA was best, the reducers' modules ignored; wrong class
    counts are an error naming the file."""
    weights, ema = small_vit().state_dict(), small_vit().state_dict()
    weights["reducers.0.extra"] = torch.zeros(1)
    path = tmp_path / "baseline.pth"
    options = ["--method", "dynamicvit", "--teacher", str(path)]
    for source, expected in (("ema", ema), ("model", weights)):
        torch.save({"model": weights, "ema": ema, "best": {"source": source}}, path)
        teacher = load_teacher(parse_args(options), 10, torch.device("cpu"), img_size=32, patch_size=8)
        torch.testing.assert_close(
            teacher.model.state_dict()["blocks.3.attn.qkv.weight"], expected["blocks.3.attn.qkv.weight"]
        )
    with pytest.raises(ValueError, match="baseline.pth"):
        load_teacher(parse_args(options), 7, torch.device("cpu"), img_size=32, patch_size=8)
    assert load_teacher(parse_args(["--method", "topk", "--teacher", str(path)]), 10, torch.device("cpu")) is None
    assert load_teacher(parse_args(["--method", "dynamicvit"]), 10, torch.device("cpu")) is None  # no pretrained
