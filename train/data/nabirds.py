"""NABirds, official release: ``images/<class_dir>/<file>.jpg`` and space-separated id tables."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from train.data.image_files import ImageFiles, check_split, require

LAYOUT = "the official release layout: images/, images.txt, image_class_labels.txt, train_test_split.txt"
T = TypeVar("T")


def is_training(flag: str) -> bool:
    if flag not in ("0", "1"):
        raise ValueError(f"is_training must be 0 or 1, got {flag!r}")
    return flag == "1"


def read_table(path: Path, parse: Callable[[str], T]) -> dict[str, T]:
    """``{image id: parse(value)}`` from a file of ``<image id> <value>`` lines (blank lines skipped)."""
    table: dict[str, T] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError(f"expected 2 space-separated fields (image id, value), got {len(fields)}")
            if fields[0] in table:
                raise ValueError(f"image id {fields[0]} appears a second time")
            table[fields[0]] = parse(fields[1])
        except ValueError as error:
            raise ValueError(f"{path}, line {number} {line!r}: {error}; expected {LAYOUT}") from None
    return table


class NABirds(ImageFiles):
    """NABirds classification: items are (transform(image), class index).

    Class ids are mapped to contiguous indices in sorted id order over all images (555 classes in the release).
    Train: images with is_training 1; eval: is_training 0.

    Args:
        root: folder of the release (``images/``, ``images.txt``, ``image_class_labels.txt``,
            ``train_test_split.txt``).
        split: "train" or "eval".
        transform: applied to each RGB PIL image.
    """

    LAYOUT = LAYOUT

    def __init__(self, root: str | Path, split: str, transform: Callable[[Image.Image], Any] | None = None) -> None:
        check_split(split)
        root = Path(root)
        images = read_table(require(root, "images.txt", "NABirds", LAYOUT), str)
        labels = read_table(require(root, "image_class_labels.txt", "NABirds", LAYOUT), int)
        training = read_table(require(root, "train_test_split.txt", "NABirds", LAYOUT), is_training)
        require(root, "images", "NABirds", LAYOUT)
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", training)):
            missing = images.keys() - table.keys()
            if missing:
                raise ValueError(
                    f"{root / name} lacks {len(missing)} image ids of images.txt, e.g. {sorted(missing)[0]}"
                )
        class_ids = sorted({labels[image_id] for image_id in images})
        index = {class_id: i for i, class_id in enumerate(class_ids)}
        chosen = [image_id for image_id in images if training[image_id] == (split == "train")]
        super().__init__(
            root,
            [f"images/{images[image_id]}" for image_id in chosen],
            np.array([index[labels[image_id]] for image_id in chosen], dtype=np.int64),
            [str(class_id) for class_id in class_ids],
            transform,
            "images.txt",
        )
