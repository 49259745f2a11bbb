"""analysis.extract: a checkpoint's per-image reduction patterns, class tokens and logits in one .npz file."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3

import analysis.extract
import analysis.extraction
import tokred
from analysis.extraction import Extraction
from train.config import TrainConfig
from train.data import DemoDigits

TEST_IMAGES = 12  # the demo test split of the run; extractions read the first 8


def write_checkpoint(path, method="kmedoids", loc=(3, 6, 9), source="model", **config):
    """A checkpoint laid out as train/main.py writes it; returns the model and its (different) EMA model."""
    torch.manual_seed(0)
    options = config.get("method_options")
    model = tokred.create_model("deit_tiny_patch16_224", method, 0.5, loc, num_classes=10, method_options=options)
    ema = ModelEmaV3(model.eval())
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    settings = TrainConfig(method=method, r=0.5, reduction_loc=loc, demo_test_size=TEST_IMAGES, **config)
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "best": {"score": 10.0, "metric": "test_acc1", "source": source, "epoch": 0},
        "config": dataclasses.asdict(settings),
    }
    torch.save(state, path)
    return model, ema.module.eval()


def demo_images(count=8):
    """The first images of the run's demo test split, built here from the dataset class."""
    test = DemoDigits("test", length=TEST_IMAGES, seed=0)
    images, labels = zip(*(test[i] for i in range(count)), strict=True)
    return torch.stack(images), np.array(labels)


def run(checkpoint, out, *options):
    """analysis.extract in this process on the first 8 images (a later --limit in options wins)."""
    return analysis.extract.main([str(checkpoint), str(out), "--limit", "8", "--workers", "0", *options])


@pytest.fixture(scope="module")
def kmedoids(tmp_path_factory):
    """A K-Medoids checkpoint, its model, and its extraction (batches of 3, saved after each batch)."""
    folder = tmp_path_factory.mktemp("run")
    model, _ = write_checkpoint(folder / "best_checkpoint.pth")
    returned = run(folder / "best_checkpoint.pth", folder / "extraction.npz", "--batch-size", "3", "--save-every", "1")
    return folder, model, returned


def direct(model, images, batch):
    """What the extraction must hold, from traced forwards over the same batches."""
    with torch.no_grad():
        outputs = [model(images[i : i + batch], trace=True) for i in range(0, len(images), batch)]
    logits = torch.cat([logits for logits, _ in outputs])
    cls = torch.cat([torch.stack(trace.cls_features, 1) for _, trace in outputs])
    names = ("assignment", "kept", "representatives", "token_counts")
    stages = [
        {name: torch.cat([getattr(t.stages[s], name) for _, t in outputs]).numpy() for name in names}
        for s in range(len(outputs[0][1].stages))
    ]
    return logits, cls, stages


def test_extraction_matches_a_direct_forward(kmedoids):
    folder, model, returned = kmedoids
    assert not (folder / "extraction.npz.parts").exists()
    ex = Extraction.load(folder / "extraction.npz")

    images, labels = demo_images()
    logits, cls, stages = direct(model, images, 3)
    assert (ex.model, ex.method, ex.keep_rate, ex.reduction_loc, ex.blocks) == (
        "deit_tiny_patch16_224",
        "kmedoids",
        0.5,
        [3, 6, 9],
        [3, 6, 9],
    )
    checkpoint = str(folder / "best_checkpoint.pth")
    assert (ex.dataset, ex.split, ex.checkpoint, ex.weights) == ("demo", "eval", checkpoint, "model")
    assert (ex.num_classes, ex.multi_label, ex.num_images, ex.grid, ex.num_stages) == (10, False, 8, 14, 3)
    assert ex.metric == "acc1" and ex.score == pytest.approx(100 * np.mean(logits.argmax(1).numpy() == labels))
    assert ex.config["method"] == "kmedoids" and ex.config["demo_test_size"] == TEST_IMAGES

    assert ex.targets.dtype == np.int64 and np.array_equal(ex.targets, labels)
    assert ex.logits.dtype == ex.cls.dtype == np.float16
    assert ex.logits.shape == (8, 10) and ex.cls.shape == (8, 12, 192)
    np.testing.assert_array_equal(ex.logits, logits.half().numpy())
    np.testing.assert_array_equal(ex.cls, cls.half().numpy())
    for s, expected in enumerate(stages):
        for name, array in expected.items():
            stored = getattr(ex, name)[s]
            assert stored.dtype == np.int16, name
            np.testing.assert_array_equal(stored, array, err_msg=f"stage {s} {name}")
    assert [a.shape for a in ex.representatives] == [(8, 98), (8, 49), (8, 24)]  # K_s for r = 0.5 (SPEC §0.1)
    assert [a.shape for a in ex.assignment] == [(8, 196)] * 3

    assert returned.meta() == ex.meta()
    for key, array in returned.arrays().items():
        np.testing.assert_array_equal(array, ex.arrays()[key], err_msg=key)


def test_concatenate_pads_token_columns():
    """Parts of a ragged method (ATS) join with -1 padding to the widest part; other arrays just concatenate."""
    first = {"stage0_kept": np.array([[4, 1]]), "stage0_token_counts": np.array([2]), "logits": np.ones((1, 3))}
    second = {"stage0_kept": np.array([[0, 2, 7], [5, -1, -1]]), "stage0_token_counts": np.array([3, 1])}
    second["logits"] = np.zeros((2, 3))
    joined = analysis.extract.concatenate([first, second])
    np.testing.assert_array_equal(joined["stage0_kept"], [[4, 1, -1], [0, 2, 7], [5, -1, -1]])
    np.testing.assert_array_equal(joined["stage0_token_counts"], [2, 3, 1])
    assert joined["logits"].shape == (3, 3)


def test_interrupted_extraction_resumes_to_the_same_file(tmp_path, kmedoids, monkeypatch):
    folder = kmedoids[0]
    checkpoint, whole = folder / "best_checkpoint.pth", Extraction.load(folder / "extraction.npz")

    forward, calls = analysis.extract.run_batch, []

    def interrupted(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return forward(*args)

    monkeypatch.setattr(analysis.extract, "run_batch", interrupted)
    out = tmp_path / "resumed.npz"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, out, "--batch-size", "3", "--save-every", "1")
    parts = tmp_path / "resumed.npz.parts"
    assert not out.exists() and len(list(parts.glob("*.npz"))) == 2  # images 0-5 are done

    with pytest.raises(ValueError, match="partial results of another extraction"):
        run(checkpoint, out, "--batch-size", "3", "--weights", "ema")

    calls.clear()
    monkeypatch.setattr(analysis.extract, "run_batch", lambda *args: calls.append(1) or forward(*args))
    run(checkpoint, out, "--batch-size", "3", "--save-every", "1")
    assert len(calls) == 1 and not parts.exists()  # only images 6-7 were run
    resumed = Extraction.load(out)
    assert resumed.meta() == whole.meta()
    for key, array in whole.arrays().items():
        np.testing.assert_array_equal(resumed.arrays()[key], array, err_msg=key)


def test_ema_weights_when_they_scored_best(tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    model, ema = write_checkpoint(checkpoint, "topk", (4,), source="ema")
    images, _ = demo_images(2)
    with torch.no_grad():
        from_ema = ema(images)
    chosen = run(checkpoint, tmp_path / "auto.npz", "--limit", "2")
    assert chosen.weights == "ema"
    np.testing.assert_allclose(chosen.logits, from_ema.numpy(), rtol=2e-3, atol=2e-3)
    _, weights, which = analysis.extract.load_checkpoint(checkpoint, "model")
    assert which == "model" and all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(weights["head.weight"], ema.head.weight)


def test_deit_baseline_has_no_stages(tmp_path):
    """An empty reduction_loc: the class tokens and logits of the unreduced model, no stage arrays. (The folders of
    OUT are created.)"""
    checkpoint = tmp_path / "checkpoint.pth"
    model, _ = write_checkpoint(checkpoint, "topk", ())
    out = tmp_path / "new" / "deeper" / "deit.npz"
    run(checkpoint, out, "--limit", "2")
    loaded = Extraction.load(out)
    assert loaded.blocks == loaded.reduction_loc == [] and loaded.assignment == loaded.kept == []
    with np.load(out) as archive:
        assert sorted(archive.files) == ["cls", "logits", "meta", "targets"]
    images, _ = demo_images(2)
    with torch.no_grad():
        logits = model(images)
    np.testing.assert_allclose(loaded.logits, logits.numpy(), rtol=2e-3, atol=2e-3)
    assert loaded.cls.shape == (2, 12, 192)


def test_the_model_is_rebuilt_with_its_method_options(tmp_path):
    """ToMe with rounds=True reaches K_3 = 24 tokens at r = 0.5 (one round per stage stops at 25)."""
    checkpoint = tmp_path / "checkpoint.pth"
    write_checkpoint(checkpoint, "tome", method_options={"rounds": True})
    loaded = run(checkpoint, tmp_path / "tome.npz", "--limit", "2")
    assert [int(counts[0]) for counts in loaded.token_counts] == [98, 49, 24]


def test_errors(tmp_path):
    """Each failure says what to do, and leaves no output behind."""
    config = dataclasses.asdict(TrainConfig(method="topk", dataset="imagenet"))
    out = tmp_path / "out.npz"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(tmp_path / "missing.pth", out)
    torch.save({"model": {}}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="no training configuration .* train/main.py"):
        run(tmp_path / "bare.pth", out)
    torch.save({"model": {}, "config": {"model": "deit_tiny_patch16_224"}}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lacks method, r, reduction_loc, dataset"):
        run(tmp_path / "partial.pth", out)
    torch.save({"model": {}, "ema": None, "best": {"source": "model"}, "config": config}, tmp_path / "imagenet.pth")
    with pytest.raises(ValueError, match="needs its root folder: pass --data"):
        run(tmp_path / "imagenet.pth", out)
    with pytest.raises(FileNotFoundError, match="pass --data"):
        run(tmp_path / "imagenet.pth", out, "--data", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no 'ema' weights: choose --weights model"):
        run(tmp_path / "imagenet.pth", out, "--weights", "ema")
    assert not list(tmp_path.glob("out.npz*"))


def test_scores():
    """Top-1 by hand; mAP against scikit-learn's average precision of the sigmoid scores."""
    from sklearn.metrics import average_precision_score

    logits = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0], [0.5, -2.0, 4.0], [1.0, 0.0, 0.2]], dtype=np.float32)
    assert analysis.extract.score(logits, np.array([0, 2, 2, 1]), False) == ("acc1", 50.0)
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.uint8)
    name, value = analysis.extract.score(logits, targets, True)
    expected = 100 * average_precision_score(targets, 1 / (1 + np.exp(-logits)), average="macro")
    assert name == "map" and value == pytest.approx(expected)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="extraction file not found"):
        Extraction.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an extraction file"):
        Extraction.load(tmp_path / "other.npz")
    np.savez(tmp_path / "newer.npz", meta=np.array(json.dumps({"format": "tokred-extraction", "version": 99})))
    with pytest.raises(ValueError, match="up to version 1"):
        Extraction.load(tmp_path / "newer.npz")
    np.savez(tmp_path / "partial.npz", meta=np.array(json.dumps({"format": "tokred-extraction", "version": 1})))
    with pytest.raises(ValueError, match="incomplete .*model.*targets"):
        Extraction.load(tmp_path / "partial.npz")


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        analysis.extract.main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m analysis.extract" in capsys.readouterr().out


def test_damaged_files_are_named(tmp_path, kmedoids):
    """Truncated, empty, other and corrupted files: a ValueError naming the file, never a zip or pickle error."""
    data = (kmedoids[0] / "extraction.npz").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # inside an array: its checksum fails
    files = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"notes\n", "flipped": bytes(flipped)}
    for name, content in files.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}.npz .*extract it again") as error:
            Extraction.load(tmp_path / f"{name}.npz")
        assert not isinstance(error.value, analysis.extraction.NotAnExtraction), name


def test_a_checkpoint_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, tmp_path / "out.npz")
    assert f"CHECKPOINT {tmp_path} is a folder: pass a file, e.g. {tmp_path / 'best_checkpoint.pth'}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("folder", "is a folder: OUT is the file to write, e.g. .*folder/extraction.npz"),
        ("result.pth", "does not end in .npz"),
        ("file.txt/x.npz", "cannot be written: .*file.txt is a file, not a folder"),
    ],
)
def test_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys, out, says):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("")
    monkeypatch.setattr(analysis.extract, "load_checkpoint", lambda *args: pytest.fail("work started"))
    with pytest.raises(SystemExit):
        run(tmp_path / "missing.pth", tmp_path / out)
    assert re.search(f"OUT {re.escape(str(tmp_path / out))} {says}", capsys.readouterr().err)
