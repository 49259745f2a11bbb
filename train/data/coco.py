"""COCO 2014 multi-label classification from the instances annotations (no pycocotools needed)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from train.data.image_files import ImageFiles, check_split, require

LAYOUT = "train2014/, val2014/ and annotations/instances_{train,val}2014.json"
FOLDERS = {"train": "train2014", "eval": "val2014"}


class COCO2014(ImageFiles):
    """COCO 2014 as multi-label classification: items are (transform(image), multi-hot [num_classes] float32).

    Only images with at least one annotation are used, in image-id order. Category ids (1..90, sparse) map to
    contiguous indices in sorted id order (80 classes in the release). Train: train2014; eval: val2014.

    Args:
        root: folder holding ``train2014/``, ``val2014/`` and ``annotations/``.
        split: "train" or "eval".
        transform: applied to each RGB PIL image.
    """

    LAYOUT = LAYOUT
    multi_label = True

    def __init__(self, root: str | Path, split: str, transform: Callable[[Image.Image], Any] | None = None) -> None:
        check_split(split)
        root = Path(root)
        folder = FOLDERS[split]
        listing = f"annotations/instances_{folder}.json"
        annotation_file = require(root, listing, "COCO 2014", LAYOUT)
        require(root, folder, "COCO 2014", LAYOUT)
        try:
            data = json.loads(annotation_file.read_bytes())
        except json.JSONDecodeError as error:
            raise ValueError(f"{annotation_file} is not valid JSON ({error}); expected COCO's {listing}") from None
        try:
            categories = sorted((c["id"], c["name"]) for c in data["categories"])
            index = {category_id: i for i, (category_id, _) in enumerate(categories)}
            file_names = {image["id"]: image["file_name"] for image in data["images"]}
            labels: dict[int, set[int]] = {}
            for annotation in data["annotations"]:
                labels.setdefault(annotation["image_id"], set()).add(index[annotation["category_id"]])
            chosen = sorted(labels)
            paths = [f"{folder}/{file_names[image_id]}" for image_id in chosen]
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{annotation_file} is not a COCO instances file: missing or unknown {error} "
                "(expected 'images' with id and file_name, 'annotations' with image_id and category_id, "
                "'categories' with id and name)"
            ) from None
        targets = np.zeros((len(chosen), len(categories)), dtype=np.uint8)
        for row, image_id in enumerate(chosen):
            targets[row, list(labels[image_id])] = 1
        super().__init__(root, paths, targets, [name for _, name in categories], transform, listing)
