"""The four real datasets on tiny fixture trees, unreadable-image handling, and the entry points."""

import csv
import io
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from train.data import DemoDigits, build_transform, load_dataset

AA = "rand-m9-mstd0.5-inc1"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's


@dataclass
class Tree:
    """A fixture dataset: root, expected {relative path: target} per split, and each image's solid colour."""

    root: Path
    num_classes: int
    multi_label: bool
    splits: dict[str, dict[str, object]] = field(default_factory=dict)
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def image(self, relative: str, size: tuple[int, int] = (40, 30)) -> None:
        """Write a solid-colour image, distinct from the others; JPEG or PNG by its extension."""
        colour = (20 + 25 * len(self.colours), 200 - 20 * len(self.colours), 90)
        self.colours[relative] = colour
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        format = "PNG" if path.suffix.lower() == ".png" else "JPEG"
        Image.new("RGB", size, colour).save(path, format=format)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def make_imagenet(root: Path) -> Tree:
    tree = Tree(root, num_classes=3, multi_label=False)
    index = {"n01000001": 0, "n02000002": 1, "n03000003": 2}  # sorted wnid order
    files = {
        "train": {"n02000002": ["b.JPEG", "a.JPEG"], "n01000001": ["x.JPEG"], "n03000003": ["c.JPEG", "d.png"]},
        "val": {"n03000003": ["v3.JPEG"], "n01000001": ["v1.JPEG"], "n02000002": ["v2.JPEG"]},
    }
    for folder, split in (("train", "train"), ("val", "eval")):
        tree.splits[split] = {}
        for wnid, names in files[folder].items():
            for name in names:
                tree.image(f"{folder}/{wnid}/{name}")
                tree.splits[split][f"{folder}/{wnid}/{name}"] = index[wnid]
    (root / "train/n01000001/notes.txt").write_text("not an image")
    return tree


def make_nabirds(root: Path) -> Tree:
    tree = Tree(root, num_classes=3, multi_label=False)
    rows = [  # image id, path under images/, class id, is_training
        ("id-a", "0295/a.jpg", 295, 1),
        ("id-b", "0817/b.jpg", 817, 1),
        ("id-c", "1000/c.jpg", 1000, 0),
        ("id-d", "0295/d.jpg", 295, 0),
        ("id-e", "0817/e.jpg", 817, 1),
    ]
    index = {295: 0, 817: 1, 1000: 2}  # sorted numerically, not as text
    tree.splits = {"train": {}, "eval": {}}
    for _, path, class_id, training in rows:
        tree.image(f"images/{path}")
        tree.splits["train" if training else "eval"][f"images/{path}"] = index[class_id]
    write_lines(root / "images.txt", [f"{i} {path}" for i, path, _, _ in rows])
    write_lines(root / "image_class_labels.txt", [f"{i} {c}" for i, _, c, _ in rows])
    write_lines(root / "train_test_split.txt", [f"{i} {t}" for i, _, _, t in rows])
    write_lines(root / "classes.txt", ["295 Some bird", "817 Another bird", "1000 A third bird"])
    return tree


def make_coco(root: Path) -> Tree:
    tree = Tree(root, num_classes=3, multi_label=True)
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    # folder: (images {id: file}, annotations [(image id, category id)], multi-hot over person, dog, toothbrush)
    splits = {
        "train2014": (
            {4: "d.jpg", 1: "a.jpg", 2: "b.jpg", 3: "c.jpg"},
            [(1, 18), (4, 1), (1, 18), (1, 1), (2, 90)],
            {"a.jpg": (1, 1, 0), "b.jpg": (0, 0, 1), "d.jpg": (1, 0, 0)},
        ),
        "val2014": ({10: "v.jpg", 11: "w.jpg"}, [(10, 90), (10, 18)], {"v.jpg": (0, 1, 1)}),
    }
    (root / "annotations").mkdir(parents=True)
    for (folder, (images, annotations, expected)), split in zip(splits.items(), ("train", "eval"), strict=True):
        for name in images.values():
            tree.image(f"{folder}/{name}")
        tree.splits[split] = {f"{folder}/{name}": target for name, target in expected.items()}
        data = {
            "images": [{"id": i, "file_name": name, "width": 40, "height": 30} for i, name in images.items()],
            "annotations": [
                {"id": n, "image_id": i, "category_id": c, "area": 10.0} for n, (i, c) in enumerate(annotations)
            ],
            "categories": categories,
        }
        (root / f"annotations/instances_{folder}.json").write_text(json.dumps(data))
    return tree


NUS_ROWS = [  # path, labels, split, multi-hot over the vocabulary animal, clouds, sky, water
    ("images/a.jpg", "['sky', 'clouds']", "train", (0, 1, 1, 0)),
    ("images/b.jpg", "['water']", "train", (0, 0, 0, 1)),
    ("images/c.jpg", "['animal', 'sky']", "val", (1, 0, 1, 0)),
    ("images/d.jpg", "[]", "train", (0, 0, 0, 0)),
    ("images/e.jpg", "['water', 'sky']", "val", (0, 0, 1, 1)),
]


def write_nus_csv(root: Path, rows: list[list[str]]) -> None:
    with (root / "nus_wid_data.csv").open("w", newline="") as file:
        csv.writer(file).writerows(rows)


def make_nuswide(root: Path, header: bool = True) -> Tree:
    tree = Tree(root, num_classes=4, multi_label=True)
    tree.splits = {"train": {}, "eval": {}}
    for path, _, split, target in NUS_ROWS:
        tree.image(path)
        tree.splits["train" if split == "train" else "eval"][path] = target
    rows = [[path, labels, split] for path, labels, split, _ in NUS_ROWS]
    write_nus_csv(root, ([["filepath", "label", "split_name"]] if header else []) + rows)
    return tree


BUILDERS: dict[str, Callable[[Path], Tree]] = {
    "imagenet": make_imagenet,
    "nabirds": make_nabirds,
    "coco": make_coco,
    "nuswide": make_nuswide,
}
NAMES = list(BUILDERS)


def relative(dataset, index: int, root: Path) -> str:
    return dataset.path(index).relative_to(root).as_posix()


def plain_target(target: int | torch.Tensor) -> object:
    return tuple(int(v) for v in target.tolist()) if isinstance(target, torch.Tensor) else target


def assert_colour(image: Image.Image, colour: tuple[int, int, int]) -> None:
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
    assert np.abs(mean - colour).max() < 4, (mean, colour)


@pytest.mark.parametrize("name", NAMES)
def test_splits_and_targets(name: str, tmp_path: Path):
    tree = BUILDERS[name](tmp_path)
    for split, expected in tree.splits.items():
        dataset = load_dataset(name, str(tmp_path), split, None)
        assert len(dataset) == len(expected)
        assert dataset.num_classes == tree.num_classes and dataset.multi_label == tree.multi_label
        assert {
            relative(dataset, i, tmp_path): plain_target(dataset.target(i)) for i in range(len(dataset))
        } == expected
        for i in range(len(dataset)):  # each item is its own file's image with its own target
            image, target = dataset[i]
            assert image.mode == "RGB"
            assert_colour(image, tree.colours[relative(dataset, i, tmp_path)])
            assert plain_target(target) == expected[relative(dataset, i, tmp_path)]
            if tree.multi_label:
                assert target.dtype == torch.float32 and target.shape == (tree.num_classes,)
            else:
                assert type(target) is int
        assert dataset.unreadable == 0


def test_nuswide_without_header(tmp_path: Path):
    tree = make_nuswide(tmp_path, header=False)
    dataset = load_dataset("nuswide", str(tmp_path), "eval", None)
    assert {relative(dataset, i, tmp_path): plain_target(dataset.target(i)) for i in range(2)} == tree.splits["eval"]


def test_class_names(tmp_path: Path):
    make_coco(tmp_path / "coco")
    make_nuswide(tmp_path / "nus")
    assert load_dataset("coco", str(tmp_path / "coco"), "eval", None).classes == ["person", "dog", "toothbrush"]
    assert load_dataset("nuswide", str(tmp_path / "nus"), "train", None).classes == ["animal", "clouds", "sky", "water"]


@pytest.mark.parametrize("name", NAMES)
def test_transforms_give_normalised_224_images(name: str, tmp_path: Path):
    tree = BUILDERS[name](tmp_path)
    single = name in ("imagenet", "nabirds")
    options = [
        dict(aa=AA, reprob=0.25, color_jitter=0.0, cutout=0.0),
        dict(aa=None, reprob=0.0, color_jitter=0.3, cutout=0.0),
    ]
    if not single:
        options = [dict(aa=AA, reprob=0.0, color_jitter=0.0, cutout=0.5)]
    for training in (True, False):
        for option in options:
            dataset = load_dataset(name, str(tmp_path), "train", build_transform(name, training, **option))
            image, _ = dataset[0]
            assert image.shape == (3, 224, 224) and image.dtype == torch.float32
            if not training:  # a solid colour stays solid: (colour / 255 - mean) / std everywhere
                colour = torch.tensor(tree.colours[relative(dataset, 0, tmp_path)]) / 255
                expected = ((colour - torch.tensor(MEAN)) / torch.tensor(STD))[:, None, None].expand(3, 224, 224)
                torch.testing.assert_close(image, expected, atol=0.08, rtol=0)


def corrupt(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"these bytes are no image " * 8)
    else:  # a JPEG cut in the middle of its data
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.mark.parametrize("name", NAMES)
def test_unreadable_image_is_replaced_by_the_next(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    tree = BUILDERS[name](tmp_path)
    dataset = load_dataset(name, str(tmp_path), "train", None)
    n = len(dataset)
    bad = {0: "garbage", n - 1: "truncated"}
    for index, kind in bad.items():
        corrupt(dataset.path(index), kind)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            items = [dataset[i] for i in range(n)]
    for index in range(n):
        source = {0: 1, n - 1: 1}.get(index, index)  # the next readable index, wrapping around
        image, target = items[index]
        assert_colour(image, tree.colours[relative(dataset, source, tmp_path)])
        assert plain_target(target) == plain_target(dataset.target(source))
    assert dataset.unreadable == 2
    warned = [record.getMessage() for record in caplog.records if "unreadable image" in record.getMessage()]
    assert len(warned) == 2  # once per file, though each was read twice
    assert all(any(str(dataset.path(i)) in message for message in warned) for i in bad)


@pytest.mark.parametrize(("name", "start_method"), [("nabirds", "fork"), ("coco", "spawn")])
def test_unreadable_images_counted_across_workers(name: str, start_method: str, tmp_path: Path):
    BUILDERS[name](tmp_path)
    dataset = load_dataset(name, str(tmp_path), "train", build_transform(name, False, None, 0.0, 0.0, 0.0))
    corrupt(dataset.path(1), "garbage")
    corrupt(dataset.path(2), "truncated")
    assert len(dataset) == 3
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=start_method)
    for _ in range(2 if start_method == "fork" else 1):  # new workers each epoch (spawned ones start slowly)
        batches = list(loader)
        images = torch.cat([images for images, _ in batches])
        targets = torch.cat([torch.as_tensor(targets) for _, targets in batches])
        assert images.shape == (3, 3, 224, 224)
        for index in (1, 2):  # the next readable item wraps around to 0
            assert torch.equal(images[index], images[0]) and torch.equal(targets[index], targets[0])
        assert not torch.equal(targets[0], torch.as_tensor(dataset.target(1)))
    assert dataset.unreadable == 2


def test_no_readable_image_is_an_error(tmp_path: Path):
    make_coco(tmp_path)
    dataset = load_dataset("coco", str(tmp_path), "eval", None)
    corrupt(dataset.path(0), "garbage")
    with pytest.raises(RuntimeError, match="none of the 1 images"):
        dataset[0]


@pytest.mark.parametrize("name", NAMES)
def test_missing_root(name: str, tmp_path: Path):
    with pytest.raises(ValueError, match="--data"):
        load_dataset(name, None, "train", None)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'absent'} is not a folder; expected")):
        load_dataset(name, str(tmp_path / "absent"), "train", None)


@pytest.mark.parametrize(
    ("name", "split", "missing"),
    [
        ("imagenet", "train", "val"),
        ("nabirds", "train", "image_class_labels.txt"),
        ("nabirds", "eval", "train_test_split.txt"),
        ("nabirds", "eval", "images"),
        ("coco", "eval", "annotations/instances_val2014.json"),
        ("coco", "train", "train2014"),
        ("nuswide", "train", "nus_wid_data.csv"),
    ],
)
def test_missing_part_of_the_layout(name: str, split: str, missing: str, tmp_path: Path):
    BUILDERS[name](tmp_path)
    path = tmp_path / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError, match=f"has no {missing}; expected"):
        load_dataset(name, str(tmp_path), split, None)


def test_imagenet_layout_errors(tmp_path: Path):
    make_imagenet(tmp_path)
    (tmp_path / "val/n09999999").mkdir()
    with pytest.raises(ValueError, match="different class folders.*n09999999"):
        load_dataset("imagenet", str(tmp_path), "train", None)
    (tmp_path / "val/n09999999").rmdir()
    for folder in list((tmp_path / "val").iterdir()):  # the flat validation folder of the original archive
        for file in folder.iterdir():
            file.rename(tmp_path / "val" / file.name)
        folder.rmdir()
    with pytest.raises(FileNotFoundError, match="val has no class folders"):
        load_dataset("imagenet", str(tmp_path), "eval", None)


def test_images_elsewhere_than_listed(tmp_path: Path):
    make_nuswide(tmp_path)
    (tmp_path / "images").rename(tmp_path / "pictures")
    with pytest.raises(FileNotFoundError, match="images does not exist, yet .*nus_wid_data.csv lists images there"):
        load_dataset("nuswide", str(tmp_path), "train", None)


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        ("images.txt", "id-f", "images.txt, line 6 'id-f': expected 2 space-separated fields"),
        ("image_class_labels.txt", "id-f sparrow", r"image_class_labels.txt, line 6 .*invalid literal for int"),
        ("train_test_split.txt", "id-f 2", "train_test_split.txt, line 6 'id-f 2': is_training must be 0 or 1"),
        ("images.txt", "id-a 0295/a2.jpg", "line 6 .*image id id-a appears a second time"),
        ("images.txt", "id-f 0295/f.jpg", "image_class_labels.txt lacks 1 image ids of images.txt, e.g. id-f"),
    ],
)
def test_nabirds_malformed(file: str, line: str, message: str, tmp_path: Path):
    make_nabirds(tmp_path)
    with (tmp_path / file).open("a") as handle:
        handle.write(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_dataset("nabirds", str(tmp_path), "train", None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[:-10], "is not valid JSON"),
        (
            lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "images"}),
            "missing or unknown 'images'",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "annotations": [{"image_id": 10, "category_id": 5}]}),
            "missing or unknown 5",
        ),
    ],
)
def test_coco_malformed(edit: Callable[[str], str], message: str, tmp_path: Path):
    make_coco(tmp_path)
    path = tmp_path / "annotations/instances_val2014.json"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=message):
        load_dataset("coco", str(tmp_path), "eval", None)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["images/f.jpg", "['sky'", "train"], "line 3: the label list \"\\['sky'\" is not a Python list of strings"),
        (["images/f.jpg", "[1, 2]", "train"], "line 3: the label list '\\[1, 2\\]' is not a Python list of strings"),
        (["images/f.jpg", "['sky']", "test"], "line 3: the split 'test' is neither 'train' nor 'val'"),
        (["images/f.jpg", "['sky']"], "line 3: expected at least 3 columns, got 2"),
    ],
)
def test_nuswide_malformed(row: list[str], message: str, tmp_path: Path):
    make_nuswide(tmp_path)
    rows = [[path, labels, split] for path, labels, split, _ in NUS_ROWS]
    write_nus_csv(tmp_path, [["filepath", "label", "split_name"], rows[0], row, *rows[1:]])
    with pytest.raises(ValueError, match=message):
        load_dataset("nuswide", str(tmp_path), "train", None)


def test_option_errors():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", "/data", "train", None)
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        load_dataset("demo", None, "val", None)
    with pytest.raises(ValueError, match="multi-label: --reprob"):
        build_transform("coco", True, None, 0.25, 0.0, 0.5)
    with pytest.raises(ValueError, match="single-label: --cutout"):
        build_transform("nabirds", True, None, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="RandAugment policy"):
        build_transform("nuswide", True, "augmix-m5", 0.0, 0.0, 0.5)


def test_demo_through_the_entry_point():
    dataset = load_dataset("demo", None, "eval", None, demo_length=7, seed=3)
    assert isinstance(dataset, DemoDigits)
    assert (dataset.split, len(dataset), dataset.seed) == ("test", 7, 3)
    assert dataset.multi_label is False and dataset.num_classes == 10
    assert load_dataset("demo", None, "train", None).split == "train"
    assert build_transform("demo", True, AA, 0.25, 0.3, 0.5) is None
