"""Image-file datasets that survive unreadable images: the loading logic shared by the four real datasets."""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
# What PIL raises for a missing, truncated, corrupt or oversized image file.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def require(root: Path, relative: str, dataset: str, layout: str) -> Path:
    """``root / relative``, or a FileNotFoundError naming the layout the dataset expects."""
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root {root} is not a folder; expected {layout}")
    path = root / relative
    if not path.exists():
        raise FileNotFoundError(f"{dataset} root {root} has no {relative}; expected {layout}")
    return path


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


class ImageFiles(Dataset):
    """Images listed relative to a root folder, with their targets.

    Items are ``(transform(image), target)``; without a transform the image is an RGB PIL image. The target is
    a class index (``int``) or, when ``multi_label``, a float32 multi-hot vector ``[num_classes]``.

    An image that cannot be read never stops an epoch: item ``i`` is replaced by the next readable item
    (``i + 1``, ``i + 2``, ... modulo the length), each unreadable file is logged once, and ``unreadable``
    counts them across DataLoader worker processes.

    Args:
        root: folder the paths are relative to.
        paths: image paths, relative to ``root``.
        targets: class indices ``[N]`` (int64) or multi-hot rows ``[N, num_classes]`` (uint8).
        classes: class names; ``num_classes = len(classes)``.
        transform: applied to each RGB PIL image.
        listing: the file (relative to ``root``) the paths come from, named in errors.
    """

    multi_label: bool = False

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        targets: np.ndarray,
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None,
        listing: str,
    ) -> None:
        if not paths:
            raise ValueError(f"{root / listing} lists no images for this split")
        first = root / paths[0]
        if not first.parent.is_dir():
            raise FileNotFoundError(
                f"{first.parent} does not exist, yet {root / listing} lists images there "
                f"(image paths are taken relative to {root}); check --data and that the images are unpacked"
            )
        self.root = root
        # One numpy array, not a list of str objects: reading it does not copy pages into forked workers.
        self._paths = np.array([path.encode() for path in paths])
        self.targets = targets
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.transform = transform
        # One flag per file in shared memory, seen and set by DataLoader workers of any start method.
        self._unreadable_flags = torch.zeros(len(paths), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        """The file of item ``index``."""
        return self.root / self._paths[index].decode()

    def target(self, index: int) -> int | Tensor:
        """Class index, or float32 multi-hot ``[num_classes]`` when ``multi_label``."""
        if self.multi_label:
            return torch.from_numpy(self.targets[index].astype(np.float32))
        return int(self.targets[index])

    @property
    def unreadable(self) -> int:
        """Distinct files found unreadable so far by this process and its DataLoader workers (not other ranks)."""
        return int(self._unreadable_flags.count_nonzero())

    def _read(self, index: int) -> Image.Image | None:
        path = self.path(index)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except UNREADABLE as error:
            if not self._unreadable_flags[index]:
                self._unreadable_flags[index] = True
                log.warning("unreadable image %s (%s); using the next readable image in its place", path, error)
            return None

    def __getitem__(self, index: int) -> tuple[Any, int | Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for step in range(n):
            source = (index + step) % n
            image = self._read(source)
            if image is not None:
                break
        else:
            raise RuntimeError(f"none of the {n} images under {self.root} can be read; check --data")
        return (image if self.transform is None else self.transform(image)), self.target(source)
