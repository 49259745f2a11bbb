"""NUS-WIDE in the ASL release: ``nus_wid_data.csv`` rows of (image path, label list, split)."""

import ast
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from train.data.image_files import ImageFiles, check_split, require

LAYOUT = (
    "nus_wid_data.csv with columns (image path relative to the root, label list such as \"['clouds', 'sky']\", "
    "train or val), and the images it lists"
)
SPLITS = {"train": "train", "eval": "val"}


def parse_labels(text: str) -> list[str]:
    try:
        labels = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        labels = None
    if not isinstance(labels, list | tuple) or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"the label list {text!r} is not a Python list of strings")
    return list(labels)


def read_rows(path: Path) -> list[tuple[str, list[str], str]]:
    """``(image path, labels, split)`` per row; a first row whose third column is no split is a header."""
    rows = []
    with path.open(newline="") as file:
        for number, row in enumerate(csv.reader(file), 1):
            if not row:
                continue
            try:
                if len(row) < 3:
                    raise ValueError(f"expected at least 3 columns, got {len(row)}")
                if row[2] not in SPLITS.values():
                    if number == 1:
                        continue
                    raise ValueError(f"the split {row[2]!r} is neither 'train' nor 'val'")
                rows.append((row[0], parse_labels(row[1]), row[2]))
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: {error}; expected {LAYOUT}") from None
    return rows


class NUSWide(ImageFiles):
    """NUS-WIDE multi-label classification: items are (transform(image), multi-hot [num_classes] float32).

    The label vocabulary is the sorted union of labels over all rows of both splits (81 in the release).
    Train: rows marked train; eval: rows marked val.

    Args:
        root: folder holding ``nus_wid_data.csv``; image paths are relative to it.
        split: "train" or "eval".
        transform: applied to each RGB PIL image.
    """

    LAYOUT = LAYOUT
    multi_label = True

    def __init__(self, root: str | Path, split: str, transform: Callable[[Image.Image], Any] | None = None) -> None:
        check_split(split)
        root = Path(root)
        rows = read_rows(require(root, "nus_wid_data.csv", "NUS-WIDE", LAYOUT))
        vocabulary = sorted({label for _, labels, _ in rows for label in labels})
        index = {label: i for i, label in enumerate(vocabulary)}
        chosen = [(path, labels) for path, labels, name in rows if name == SPLITS[split]]
        targets = np.zeros((len(chosen), len(vocabulary)), dtype=np.uint8)
        for row, (_, labels) in enumerate(chosen):
            targets[row, [index[label] for label in labels]] = 1
        super().__init__(root, [path for path, _ in chosen], targets, vocabulary, transform, "nus_wid_data.csv")
