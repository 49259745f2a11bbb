"""The study's image transforms (SPEC §8.2): 224² inputs normalised with the ImageNet mean and std.

Single-label datasets (ImageNet, NABirds) use timm's ImageNet pipelines; multi-label datasets (COCO, NUS-WIDE)
use ASL's: Resize → Cutout → RandAugment. Every random draw comes from the global torch, numpy and ``random``
streams, which DataLoader seeds per worker, so seeding makes the augmentation repeatable.
"""

from collections.abc import Callable

import torch
from PIL import Image, ImageOps
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    auto_augment,
    create_transform,
    rand_augment_transform,
)
from timm.data.transforms import str_to_pil_interp
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import InterpolationMode

IMAGE_SIZE = 224
CROP_PCT = 0.875  # eval: resize the shorter side to 224 / 0.875 = 256, then centre-crop 224


class Cutout:
    """Paint a rectangle of round(size·W) × round(size·H) pixels (a square on square images) in one random colour.

    The centre is a uniformly random pixel, the rectangle is clipped to the image, and the colour is uniform
    over RGB; it is always applied (ASL's CutoutPIL, drawing from torch's generator instead of numpy's).

    Args:
        size: side as a fraction of the image side, in (0, 1].
    """

    def __init__(self, size: float) -> None:
        if not 0 < size <= 1:
            raise ValueError(f"the Cutout size is a fraction of the image side in (0, 1], got {size}")
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        """RGB PIL image in, a painted copy out."""
        width, height = image.size
        side_x, side_y = int(self.size * width + 0.5), int(self.size * height + 0.5)
        centre_x, centre_y = int(torch.randint(width, ())), int(torch.randint(height, ()))
        colour = tuple(torch.randint(256, (3,)).tolist())
        left, top = centre_x - side_x // 2, centre_y - side_y // 2
        out = image.copy()
        out.paste(colour, (max(left, 0), max(top, 0), min(left + side_x, width), min(top + side_y, height)))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's RandAugment posterize for Pillow ≥ 13, which refuses to keep 0 bits: timm's increasing policy
    (``inc1``) asks for 0 bits at magnitude 10, which gives a black image, as older Pillow did."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return image.point([0] * 256 * len(image.getbands()))
    return ImageOps.posterize(image, bits_to_keep)


def with_safe_posterize(transform: transforms.Compose) -> transforms.Compose:
    """The same pipeline with :func:`posterize` in its RandAugment (timm's crashes on Pillow ≥ 13)."""
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize
    return transform


def single_label_transform(
    training: bool, aa: str | None, reprob: float, color_jitter: float
) -> Callable[[Image.Image], Tensor]:
    """ImageNet/NABirds: PIL image → [3, 224, 224] float32.

    Train: RandomResizedCrop(224, bicubic) → horizontal flip → RandAugment ``aa`` (else ColorJitter when
    ``color_jitter`` > 0) → ToTensor → Normalize → RandomErasing(``reprob``, per-pixel noise).
    Eval: Resize(256, bicubic) → CenterCrop(224) → ToTensor → Normalize.
    """
    if not training:
        return create_transform(IMAGE_SIZE, interpolation="bicubic", crop_pct=CROP_PCT)
    pipeline = create_transform(
        IMAGE_SIZE,
        is_training=True,
        auto_augment=aa or None,
        color_jitter=color_jitter if color_jitter > 0 else None,
        interpolation="bicubic",
        re_prob=reprob,
        re_mode="pixel",
    )
    return with_safe_posterize(pipeline)


def multi_label_transform(training: bool, aa: str | None, cutout: float) -> Callable[[Image.Image], Tensor]:
    """COCO/NUS-WIDE: PIL image → [3, 224, 224] float32.

    Train: Resize((224, 224), bicubic) → Cutout(``cutout``) when > 0 → RandAugment ``aa`` → ToTensor → Normalize.
    Eval: Resize((224, 224), bicubic) → ToTensor → Normalize.
    """
    steps: list[Callable] = [transforms.Resize((IMAGE_SIZE, IMAGE_SIZE), interpolation=InterpolationMode.BICUBIC)]
    if training and cutout > 0:
        steps.append(Cutout(cutout))
    if training and aa:
        if not aa.startswith("rand"):
            raise ValueError(f"multi-label datasets take a RandAugment policy such as rand-m9-mstd0.5-inc1, got {aa!r}")
        hparams = dict(  # as timm's create_transform sets them for the single-label datasets
            translate_const=int(IMAGE_SIZE * 0.45),
            img_mean=tuple(min(255, round(255 * x)) for x in IMAGENET_DEFAULT_MEAN),
            interpolation=str_to_pil_interp("bicubic"),
        )
        steps.append(rand_augment_transform(aa, hparams))
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return with_safe_posterize(transforms.Compose(steps))
