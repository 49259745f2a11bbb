"""python -m tokred.sweep: a tiny sweep end to end, its record and resume, the figure, the page in a browser, errors."""

import csv
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import tokred
from tokred.sweep.run import learned_methods, main
from train.checkpoint import Checkpoint
from train.config import TrainConfig
from train.data import DemoDigits

SMALL = ["--limit", "4", "--batch", "2", "--min-time", "0", "--threads", "1"]
TINY = ["--methods", "topk", "tome", "--rates", "0.5", "0.7", *SMALL]
BLUE = np.array([31, 119, 180])  # matplotlib's first colour: the first method's curve (topk)


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def demo_accuracy(model: torch.nn.Module, count: int) -> float:
    """Top-1 % of ``model`` on the first ``count`` demo test images (seed 0), one image at a time."""
    data = DemoDigits("test", length=count, seed=0)
    with torch.no_grad():
        hits = sum(int(model.eval()(image[None]).argmax()) == label for image, label in data)
    return 100 * hits / count


@pytest.fixture(autouse=True, scope="module")
def threads() -> Iterator[None]:
    """The sweeps here run on one thread (--threads 1: steadier on a shared machine); the rest of the suite not."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    main([*TINY, "--out", str(out)])
    return out


def test_methods_with_parameters_are_found_from_their_modules():
    assert learned_methods() == {"dynamicvit", "dpc_knn", "sit", "patchmerger", "sinkhorn"}


def test_csv_holds_one_row_per_configuration(swept):
    got = {(row["method"], float(row["r"])): row for row in rows(swept)}
    assert set(got) == {("none", 1.0), ("topk", 0.5), ("topk", 0.7), ("tome", 0.5), ("tome", 0.7)}
    for (method, r), row in got.items():
        assert row["random_weights"] == "True" and row["weights"] == "random (seed 0)"
        assert row["images"] == "4" and row["batch"] == "2" and row["metric"] == "acc1"
        assert float(row["images_per_s"]) > 0 and float(row["latency_ms"]) > 0 and float(row["speedup"]) > 0
        if method == "topk":  # K_s = floor(196 r^s)
            assert row["tokens"] == "/".join(str(math.floor(196 * r**s)) for s in (1, 2, 3))
    assert got[("none", 1.0)]["tokens"] == "196"
    assert got[("tome", 0.5)]["tokens"] == "98/49/25"  # one matching round merges at most half (README)
    torch.manual_seed(0)
    unreduced = timm.create_model("deit_tiny_patch16_224", num_classes=10)
    assert float(got[("none", 1.0)]["score"]) == pytest.approx(demo_accuracy(unreduced, 4))


def test_a_rerun_skips_finished_rows_and_redoes_one_cut_short(swept, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(swept, out)
    lines = (out / "sweep.csv").read_text().splitlines(keepends=True)
    (out / "sweep.csv").write_text("".join(lines[:-1]) + lines[-1][:20])  # killed while writing the last row
    main([*TINY, "--out", str(out)])
    again = (out / "sweep.csv").read_text().splitlines(keepends=True)
    assert again[:-1] == lines[:-1]  # measured once: timings would differ if run again
    assert again[-1].split(",")[:2] == lines[-1].split(",")[:2] and len(again) == len(lines)
    main([*TINY, "--out", str(out)])
    assert (out / "sweep.csv").read_text().splitlines(keepends=True) == again


def test_a_rerun_with_other_settings_is_refused(swept, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(swept, out)
    with pytest.raises(SystemExit, match="other settings.*batch"):
        main([*TINY, "--batch", "3", "--out", str(out)])


def test_figures_are_valid_png_and_pdf(swept):
    with Image.open(swept / "pareto.png") as image:
        assert image.format == "PNG" and image.width > 400
    pdf = (swept / "pareto.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")


def test_page_shows_the_rows_by_throughput_and_marks_the_pareto_front(swept):
    page = (swept / "index.html").read_text()
    assert 'href="pareto.png"' in page and 'href="pareto.pdf"' in page and 'href="sweep.csv"' in page
    assert "data:image/png;base64," in page and "Random weights" in page
    table = rows(swept)
    shown = re.findall(r'<tr class="(pareto|)">(.*?)</tr>', page)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for _, row in shown]
    assert [row[4] for row in cells] == [f"{v:.1f}" for v in sorted(float(r["images_per_s"]) for r in table)[::-1]]
    points = {(float(row["images_per_s"]), float(row["score"])) for row in table}
    front = {p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)}
    marked = {(row[0].removesuffix(" ★"), row[1]) for (best, _), row in zip(shown, cells, strict=True) if best}
    assert marked == {
        ("unreduced" if r["method"] == "none" else r["method"], f"{float(r['r']):g}")
        for r in table
        if (float(r["images_per_s"]), float(r["score"])) in front
    }
    assert len(marked) >= 1 and sum(row[0].endswith(" ★") for row in cells) == len(marked)


def test_a_learned_method_comes_from_its_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = tokred.create_model("deit_tiny_patch16_224", "dpc_knn", 0.5, num_classes=10)
    config = TrainConfig(method="dpc_knn", r=0.5)
    path = tmp_path / "best_checkpoint.pth"
    Checkpoint(model=model.state_dict(), config=dict(vars(config), reduction_loc=list(config.reduction_loc))).save(path)
    out = tmp_path / "sweep"
    main([*SMALL, "--methods", "dpc_knn", "--checkpoints", str(path), "--out", str(out)])
    got = {row["method"]: row for row in rows(out)}
    assert set(got) == {"none", "dpc_knn"}
    assert "Random weights: 1 of the 2 models" in (out / "index.html").read_text()
    row = got["dpc_knn"]
    assert row["checkpoint"] == str(path) and row["random_weights"] == "False" and row["tokens"] == "98/49/24"
    assert float(row["score"]) == pytest.approx(demo_accuracy(model, 4))
    # the same file as the backbone: its classifier fits the demo's 10 classes, so the unreduced model is its own
    out = tmp_path / "trained backbone"
    main([*SMALL, "--methods", "topk", "--rates", "0.5", "--pretrained-path", str(path), "--out", str(out)])
    got = {row["method"]: row for row in rows(out)}
    assert {row["weights"] for row in got.values()} == {str(path)} and got["none"]["random_weights"] == "False"
    unreduced = timm.create_model("deit_tiny_patch16_224", num_classes=10)
    unreduced.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("reducers.")})
    assert float(got["none"]["score"]) == pytest.approx(demo_accuracy(unreduced, 4))
    assert "Random weights" not in (out / "index.html").read_text()


def test_pretrained_weights_with_a_classifier_of_other_classes_are_flagged(tmp_path):
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": timm.create_model("deit_tiny_patch16_224").state_dict()}, path)  # 1000 classes; demo: 10
    out = tmp_path / "sweep"
    main([*SMALL, "--methods", "topk", "--rates", "0.5", "--pretrained-path", str(path), "--out", str(out)])
    for row in rows(out):
        assert row["weights"] == f"{path} (new random classifier)" and row["random_weights"] == "True"
    assert "Random weights: these models are untrained" in (out / "index.html").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "fastest"], "invalid choice: 'fastest'"),
        (["--rates", "0"], r"--rates 0.0: a keep rate must lie in \(0, 1\]"),
        (["--rates", "0.5", "1.5"], r"--rates 1.5: a keep rate must lie in \(0, 1\]"),
        (["--dataset", "imagenet"], "--dataset imagenet needs --data ROOT"),
        (["--dataset", "imagenet", "--data", "/no/such/folder"], "--data /no/such/folder is not a folder"),
    ],
)
def test_bad_arguments_are_refused_with_what_to_do(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--out", str(tmp_path / "sweep")])
    assert exit.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_learned_method_without_checkpoint_or_a_wrong_layout_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"dpc_knn, sit learn parameters.*--checkpoints runs/<run>/best_checkpoint"):
        main(["--methods", "topk", "dpc_knn", "sit", "--limit", "2", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="0.173"):  # r = 0.05 at blocks 3, 6, 9 empties stage 2 (README)
        main(["--methods", "topk", "--rates", "0.05", "--limit", "2", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="ImageNet root .* has no train"):
        main(["--dataset", "imagenet", "--data", str(tmp_path), "--out", str(tmp_path / "b")])


def test_the_page_renders_in_a_browser(swept, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("TOKRED_REQUIRE_CHROMIUM") == "1":
            pytest.fail("TOKRED_REQUIRE_CHROMIUM=1 but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    shot = tmp_path / "page.png"
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    flags += "--disable-component-update --disable-sync"
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, *flags.split(), f"--user-data-dir={profile}", f"--screenshot={shot}"]
        subprocess.run([*command, "--window-size=1200,1400", (swept / "index.html").as_uri()], timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20, "the screenshot is blank"
    curve = (np.abs(pixels - BLUE).sum(-1) < 40).sum()
    assert curve > 100, f"the figure's first curve is not on the page ({curve} pixels of its colour)"
