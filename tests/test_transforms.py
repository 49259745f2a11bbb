"""The study's transforms: eval geometry, seeded augmentation, and Cutout."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import Cutout, build_transform

AA = "rand-m9-mstd0.5-inc1"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] normalised → [H, W, 3] in 0..255."""
    return ((image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255).permute(1, 2, 0)


def test_eval_geometry():
    # Single-label: a 256² image whose red and green values are its x and y keeps its central 224², from 16 to 239.
    ramp = np.arange(256, dtype=np.uint8)
    coordinates = np.stack([np.broadcast_to(ramp, (256, 256)), np.broadcast_to(ramp[:, None], (256, 256))], axis=2)
    image = Image.fromarray(np.concatenate([coordinates, np.zeros((256, 256, 1), np.uint8)], axis=2))
    out = unnormalise(build_transform("imagenet", False, None, 0.0, 0.0, 0.0)(image))
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([16.0, 16.0]), atol=1.0, rtol=0)
    torch.testing.assert_close(out[223, 223, :2], torch.tensor([239.0, 239.0]), atol=1.0, rtol=0)
    # Multi-label: the whole image is squeezed to 224², not cropped.
    third = np.zeros((100, 300, 3), np.uint8)  # black left third, white elsewhere
    third[:, 100:] = 255
    out = unnormalise(build_transform("nuswide", False, None, 0.0, 0.0, 0.0)(Image.fromarray(third)))
    assert out.shape == (224, 224, 3)
    assert out[:, :72].max() < 1 and out[:, 77:].min() > 254  # the black third ends at 224 / 3 ≈ 74.7


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("name", ["imagenet", "coco"])
def test_augmentation_follows_the_global_seeds(name: str):
    options = dict(aa=AA, reprob=0.25, color_jitter=0.0, cutout=0.0)
    if name == "coco":
        options.update(reprob=0.0, cutout=0.5)
    transform = build_transform(name, True, **options)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    outputs = []
    for seed in (1, 1, 2):
        seed_everything(seed)
        outputs.append(torch.stack([transform(image) for _ in range(4)]))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def painted_box(size: tuple[int, int], fraction: float, seed: int) -> tuple[int, int, int, int, tuple[int, ...]]:
    """(top, bottom, left, right) of the pixels Cutout paints (bottom/right exclusive), and their colour.

    The same draw on a black and on a white image: painted pixels agree, all others differ.
    """
    outputs = []
    for background in (0, 255):
        torch.manual_seed(seed)
        outputs.append(np.asarray(Cutout(fraction)(Image.new("RGB", size, (background,) * 3))))
    painted = (outputs[0] == outputs[1]).all(axis=2)
    rows, columns = np.flatnonzero(painted.any(axis=1)), np.flatnonzero(painted.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    assert painted[top:bottom, left:right].all() and painted.sum() == (bottom - top) * (right - left)
    colours = np.unique(outputs[0][painted], axis=0)
    assert len(colours) == 1
    return top, bottom, left, right, tuple(colours[0])


def test_cutout_square_of_one_colour():
    boxes = [painted_box((224, 224), 0.5, seed) for seed in range(40)]
    sides = [(bottom - top, right - left) for top, bottom, left, right, _ in boxes]
    assert (112, 112) in sides  # unclipped: round(0.5 · 224) on each side
    assert all(h <= 112 and w <= 112 for h, w in sides)
    assert any(h < 112 or w < 112 for h, w in sides)
    for (top, bottom, left, right, _), (h, w) in zip(boxes, sides, strict=True):  # clipped only at the border
        assert h == 112 or top == 0 or bottom == 224
        assert w == 112 or left == 0 or right == 224
    assert len({colour for *_, colour in boxes}) > 30
    sides = [
        (bottom - top, right - left)
        for top, bottom, left, right, _ in (painted_box((224, 224), 0.3, seed) for seed in range(40))
    ]
    assert (67, 67) in sides and max(max(side) for side in sides) == 67  # round(0.3 · 224) = round(67.2)


def test_cutout_centre_covers_every_pixel():
    """On a 10 × 8 image a 0.5 cutout is 5 × 4 pixels centred on a uniformly drawn pixel, clipped to the image."""
    width, height = 10, 8
    expected_columns = {(max(c - 2, 0), min(c - 2 + 5, width)) for c in range(width)}
    expected_rows = {(max(c - 2, 0), min(c - 2 + 4, height)) for c in range(height)}
    seen_rows, seen_columns = set(), set()
    for seed in range(300):
        top, bottom, left, right, _ = painted_box((width, height), 0.5, seed)
        seen_rows.add((top, bottom))
        seen_columns.add((left, right))
    assert seen_rows == expected_rows and seen_columns == expected_columns


def test_cutout_keeps_its_input():
    image = Image.new("RGB", (32, 32), (10, 20, 30))
    Cutout(0.5)(image)
    assert np.all(np.asarray(image) == (10, 20, 30))


def test_cutout_size_is_checked():
    with pytest.raises(ValueError, match="fraction of the image side"):
        Cutout(1.5)


@pytest.mark.parametrize("multi_label", [False, True])
def test_randaugment_posterize_at_full_magnitude(multi_label: bool):
    """The increasing posterize keeps 0 bits at magnitude 10 (reached with mstd noise): a black image, where
    timm's own op raises on Pillow ≥ 13."""
    pipeline = build_transform("coco" if multi_label else "imagenet", True, AA, 0.0, 0.0, 0.5 if multi_label else 0.0)
    (op,) = [op for step in pipeline.transforms for op in getattr(step, "ops", ()) if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.new("RGB", (20, 10), (200, 120, 40))
    assert np.asarray(op(image)).max() == 0
    op.magnitude = 5  # keeps 4 - int(5 / 10 · 4) = 2 bits
    assert np.asarray(op(image)).tolist() == np.asarray(image.point(lambda v: v & 0b11000000)).tolist()
