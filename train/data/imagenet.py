"""ImageNet-1k from class folders: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from train.data.image_files import ImageFiles, check_split, require

LAYOUT = (
    "class folders train/<wnid>/*.JPEG and val/<wnid>/*.JPEG with the same <wnid> folders in both "
    "(sort the flat ILSVRC2012 validation images into val/<wnid>/, e.g. with ImageNet's valprep.sh)"
)
FOLDERS = {"train": "train", "eval": "val"}


def class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


class ImageNet(ImageFiles):
    """ImageNet classification: items are (transform(image), class index); class index = sorted wnid order.

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: "train" or "eval" (the ``val/`` images).
        transform: applied to each RGB PIL image.
    """

    LAYOUT = LAYOUT

    def __init__(self, root: str | Path, split: str, transform: Callable[[Image.Image], Any] | None = None) -> None:
        check_split(split)
        root = Path(root)
        wnids = {name: class_folders(require(root, name, "ImageNet", LAYOUT)) for name in FOLDERS.values()}
        for name, found in wnids.items():
            if not found:
                raise FileNotFoundError(f"ImageNet {root / name} has no class folders; expected {LAYOUT}")
        if wnids["train"] != wnids["val"]:
            differ = sorted(set(wnids["train"]) ^ set(wnids["val"]))
            raise ValueError(
                f"ImageNet train/ and val/ under {root} have different class folders "
                f"({len(differ)} in only one of them, e.g. {differ[:5]}); expected {LAYOUT}"
            )
        folder = FOLDERS[split]
        paths: list[str] = []
        targets: list[int] = []
        for index, wnid in enumerate(wnids["train"]):
            files = sorted(
                entry.name
                for entry in os.scandir(root / folder / wnid)
                if entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS)
            )
            if not files:
                raise FileNotFoundError(f"ImageNet class folder {root / folder / wnid} holds no images")
            paths += [f"{folder}/{wnid}/{name}" for name in files]
            targets += [index] * len(files)
        super().__init__(root, paths, np.array(targets, dtype=np.int64), wnids["train"], transform, folder)
