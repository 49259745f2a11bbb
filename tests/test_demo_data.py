import subprocess
import sys

import pytest
import torch

from train.data import DemoDigits
from train.data.demo import SOURCE_SPLIT, mnist_digits


def test_items_are_deterministic_and_well_formed():
    data = DemoDigits("train", length=50)
    image, label = data[7]
    again, same_label = DemoDigits("train", length=50)[7]
    assert torch.equal(image, again) and label == same_label
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert 0 <= label < 10
    raw, _, (top, left, side) = data.item(7)
    assert raw.min() >= 0 and raw.max() <= 1
    assert 224 // 4 <= side < 224 // 2 and 0 <= top <= 224 - side and 0 <= left <= 224 - side
    assert not torch.equal(image, data[8][0])
    assert not torch.equal(image, DemoDigits("train", length=50, seed=1)[7][0])


def test_same_images_in_another_process():
    """No per-process randomness (hash seeds, worker RNG) leaks into the images."""
    code = "from train.data import DemoDigits; print(float(DemoDigits('test')[3][0].sum()))"
    out = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert out[0] == out[1] and float(out[0]) == pytest.approx(float(DemoDigits("test")[3][0].sum()))


def test_splits_draw_disjoint_digits_and_all_classes():
    digits, labels = mnist_digits()
    assert digits.shape == (5000, 28, 28) and labels.bincount().tolist() == [500] * 10
    train_labels = torch.tensor([DemoDigits("train", length=300)[i][1] for i in range(300)])
    assert train_labels.unique().numel() == 10
    # the digit drawn for a test image comes from the held-out part
    data = DemoDigits("test", length=5)
    assert all(SOURCE_SPLIT <= data._source(data._generator(i)) < 5000 for i in range(5))


def test_the_digit_is_drawn_in_its_box():
    raw, _, (top, left, side) = DemoDigits("train", length=3, normalize=False).item(2)
    inside = raw[:, top : top + side, left : left + side].amax(0)
    assert inside.max() > 0.6  # the digit's strokes are bright


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        DemoDigits("val")
    with pytest.raises(IndexError):
        DemoDigits("train", length=4).item(4)
