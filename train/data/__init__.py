"""Datasets for training and evaluation: the embedded demo and the study's four datasets, and their transforms."""

from collections.abc import Callable

from PIL import Image
from torch import Tensor

from train.data.coco import COCO2014
from train.data.demo import DemoDigits
from train.data.image_files import ImageFiles, check_split
from train.data.imagenet import ImageNet
from train.data.nabirds import NABirds
from train.data.nuswide import NUSWide
from train.data.transforms import Cutout, multi_label_transform, single_label_transform

DATASETS: dict[str, type[ImageNet | NABirds | COCO2014 | NUSWide]] = {
    "imagenet": ImageNet,
    "nabirds": NABirds,
    "coco": COCO2014,
    "nuswide": NUSWide,
}


def dataset_class(name: str) -> type[ImageNet | NABirds | COCO2014 | NUSWide]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose demo or one of {', '.join(DATASETS)}")
    return DATASETS[name]


def build_transform(
    dataset: str, training: bool, aa: str | None, reprob: float, color_jitter: float, cutout: float
) -> Callable[[Image.Image], Tensor] | None:
    """The study's transform for ``dataset`` (PIL image → [3, 224, 224] float32); None for the demo dataset.

    ``reprob`` and ``color_jitter`` apply to single-label datasets, ``cutout`` to multi-label ones; setting one
    for the other kind is an error rather than silently ignored.
    """
    if dataset == "demo":
        return None
    if dataset_class(dataset).multi_label:
        if reprob > 0 or color_jitter > 0:
            raise ValueError(f"{dataset} is multi-label: --reprob and --color-jitter apply to single-label datasets")
        return multi_label_transform(training, aa, cutout)
    if cutout > 0:
        raise ValueError(f"{dataset} is single-label: --cutout applies to multi-label datasets (coco, nuswide)")
    return single_label_transform(training, aa, reprob, color_jitter)


def load_dataset(
    name: str,
    root: str | None,
    split: str,
    transform: Callable[[Image.Image], Tensor] | None,
    *,
    demo_length: int | None = None,
    seed: int = 0,
) -> DemoDigits | ImageFiles:
    """Dataset ``name`` ("demo", "imagenet", "nabirds", "coco", "nuswide"), split "train" or "eval".

    Items are (image [3, 224, 224], target): a class index, or a float32 multi-hot [num_classes] for the
    multi-label datasets; every dataset has ``num_classes`` and ``multi_label``. The demo dataset needs no
    root, makes its own images (``transform`` is ignored) and takes ``demo_length`` and ``seed``.
    """
    check_split(split)
    if name == "demo":
        return DemoDigits("train" if split == "train" else "test", length=demo_length, seed=seed)
    cls = dataset_class(name)
    if root is None:
        raise ValueError(f"the {name} dataset needs its root folder: pass --data PATH, a folder with {cls.LAYOUT}")
    return cls(root, split, transform)


__all__ = [
    "COCO2014",
    "DATASETS",
    "Cutout",
    "DemoDigits",
    "ImageFiles",
    "ImageNet",
    "NABirds",
    "NUSWide",
    "build_transform",
    "load_dataset",
]
