"""analysis.collate on a directory of fake runs: collected scores, Table 6 layout, marks, the paper's numbers,
HTML and the command line. Expected values are worked out by hand below; the paper's numbers are read from the
shipped CSV with the csv module."""

import csv
import json
import logging
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import collate

BASE, TINY, SMALL = "deit_base_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224"
ROWS = ["DeiT-B", "ℓ1", "ℓ2", "ℓ∞", "Top-K", "EViT", "DynamicViT", "ATS", "ToMe", "K-Medoids", "DPC-KNN", "SiT",
        "PatchMerger", "Sinkhorn"]  # fmt: skip


def write_run(folder: Path, model: str, dataset: str, method: str, r: float, lines: list[dict], **config) -> None:
    """A run of len(lines) epochs; ``config`` overrides (e.g. reduction_loc, epochs planned)."""
    folder.mkdir(parents=True)
    config = {"model": model, "method": method, "r": r, "dataset": dataset, "reduction_loc": [3, 6, 9],
              "epochs": len(lines)} | config  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    metrics = "".join(json.dumps({"epoch": epoch, **line}) + "\n" for epoch, line in enumerate(lines))
    (folder / "metrics.jsonl").write_text(metrics)


def acc(*values: float) -> list[dict]:
    return [{"train_loss": 1.0, "test_acc1": v, "test_acc5": 99.0} for v in values]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # Top-K, ImageNet, r=0.5: best is the EMA's 79.05 at epoch 2 (model: 70.10, 78.20, 77.90).
    topk = [{"test_acc1": m, "ema_test_acc1": e} for m, e in [(70.10, 69.00), (78.20, 77.50), (77.90, 79.05)]]
    write_run(root / "base" / "topk_r0.5", BASE, "imagenet", "topk", 0.5, topk, epochs=5)  # still training
    write_run(root / "base" / "topk_r0.5_again", BASE, "imagenet", "topk", 0.5, acc(78.50))  # duplicate, worse
    # The baseline: an empty reduction_loc, whatever method and r the config names.
    write_run(root / "base" / "deit", BASE, "imagenet", "topk", 0.7, acc(81.00, 81.90), reduction_loc=[])
    for method, value in [("l1", 74.00), ("l2", 75.40), ("linf", 73.996), ("evit", 80.00), ("ats", 78.10),
                          ("tome", 82.50), ("sinkhorn", 63.33)]:  # fmt: skip
        write_run(root / "base" / f"{method}_r0.5", BASE, "imagenet", method, 0.5, acc(value))
    write_run(root / "base" / "kmedoids_r0.5", BASE, "imagenet", "kmedoids", 0.5, acc(math.nan, 76.86))
    write_run(root / "base" / "evit_r0.9", BASE, "imagenet", "evit", 0.9, acc(81.95))
    coco = [{"test_map": m, "ema_test_map": e} for m, e in [(60.00, 61.50), (62.25, 62.00)]]
    write_run(root / "base" / "coco_topk", BASE, "coco", "topk", 0.5, coco)
    write_run(root / "base" / "coco_evit", BASE, "coco", "evit", 0.5, [{"test_map": 61.00}])
    write_run(root / "tiny" / "evit_r0.7", TINY, "imagenet", "evit", 0.7, acc(70.50))
    write_run(root / "small" / "topk_r0.9", SMALL, "imagenet", "topk", 0.9, acc(79.00))
    # Incomplete or unreadable runs.
    (root / "broken" / "config_only").mkdir(parents=True)
    (root / "broken" / "config_only" / "config.json").write_text(json.dumps({"model": BASE}))
    write_run(root / "broken" / "no_eval", BASE, "imagenet", "l1", 0.25, [{"train_loss": 2.0}])
    write_run(root / "broken" / "bad_json", BASE, "imagenet", "l1", 0.7, acc(70.0))
    (root / "broken" / "bad_json" / "config.json").write_text('{"model": "deit_base')
    return root


@pytest.fixture
def runs(runs_dir: Path) -> pd.DataFrame:
    return collate.collect_runs(runs_dir)


def paper_value(backbone: str, dataset: str, method: str, keep_rate: str) -> float:
    with open(Path(collate.__file__).parent / "data" / "paper_table6.csv", newline="") as f:
        for row in csv.DictReader(f):
            if [row[k] for k in ("backbone", "dataset", "method", "keep_rate")] == [
                backbone,
                dataset,
                method,
                keep_rate,
            ]:
                return float(row["value"])
    raise AssertionError("not in the paper's CSV")


def test_collect_runs(runs_dir: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        runs = collate.collect_runs(runs_dir)
    assert len(runs) == 15  # 19 folders: 3 incomplete, one duplicate
    by_key = runs.set_index(["backbone", "dataset", "method", "keep_rate"])
    topk = by_key.loc[(BASE, "imagenet", "topk", 0.5)]
    assert topk[["value", "source", "best_epoch", "epochs", "epochs_planned"]].tolist() == [79.05, "ema", 2, 3, 5]
    assert topk["metric"] == "top1" and topk["run"] == str(runs_dir / "base" / "topk_r0.5")
    deit = by_key.loc[(BASE, "imagenet", "deit", 1.0)]
    assert (deit["value"], deit["source"], deit["best_epoch"]) == (81.90, "model", 1)
    coco = by_key.loc[(BASE, "coco", "topk", 0.5)]
    assert (coco["metric"], coco["value"], coco["source"], coco["best_epoch"]) == ("mAP", 62.25, "model", 1)
    kmedoids = by_key.loc[(BASE, "imagenet", "kmedoids", 0.5)]
    assert (kmedoids["value"], kmedoids["best_epoch"], kmedoids["epochs"]) == (76.86, 1, 2)  # NaN epoch ignored
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for folder in ("config_only", "no_eval", "bad_json", "topk_r0.5_again"):
        assert folder in warnings
    assert warnings.count("epochs done") == 1 and "topk_r0.5: 3 of 5 epochs done" in warnings
    assert "config_only: no metrics.jsonl yet (train/main.py writes it after the first epoch)" in warnings


def test_missing_or_empty_runs_dir(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collate.collect_runs(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no runs under"):
        collate.collect_runs(tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="none of the 1 run folders"):
        collate.collect_runs(tmp_path)


def test_table6_layout(runs: pd.DataFrame):
    table = collate.table6(runs, BASE)
    assert list(table.index) == ROWS
    assert list(table.columns) == [(d, r) for d in ("imagenet", "coco") for r in (0.25, 0.5, 0.7, 0.9)]
    assert table.loc["Top-K", ("imagenet", 0.5)] == 79.05
    assert table.loc["EViT", ("imagenet", 0.9)] == 81.95
    assert table.loc["Top-K", ("coco", 0.5)] == 62.25
    assert list(table.loc["DeiT-B", "imagenet"]) == [81.90] * 4  # the baseline spans its dataset's keep rates
    assert table.loc["DeiT-B", "coco"].isna().all() and table.loc["DynamicViT"].isna().all()
    assert list(collate.table6(runs, TINY).index)[:2] == ["DeiT-T", "ℓ1"]
    with pytest.raises(ValueError, match="no results of vit_huge"):
        collate.table6(runs, "vit_huge")


def test_marks_on_a_column(runs: pd.DataFrame):
    table = collate.table6(runs, BASE)
    marks = collate.rank_marks(table)
    # ImageNet r=0.5, by hand: ToMe 82.50 > EViT 80.00 > Top-K 79.05 > ATS 78.10 > K-Medoids 76.86 > ℓ2 75.40 >
    # ℓ1 74.00 = ℓ∞ 74.00 (73.996 as displayed) > Sinkhorn 63.33; the baseline is 81.90.
    want = {"ToMe": "best1", "EViT": "best2", "Top-K": "best3", "Sinkhorn": "worst1", "ℓ1": "worst2", "ℓ∞": "worst2"}
    assert marks.rank[("imagenet", 0.5)].to_dict() == {row: want.get(row, "") for row in ROWS}
    above = marks.above_baseline[("imagenet", 0.5)]
    assert list(above[above].index) == ["ToMe"]
    assert marks.above_baseline.loc["EViT", ("imagenet", 0.9)]  # 81.95 > 81.90
    # Two values: one best, one worst; no baseline on COCO, so nothing is above it.
    assert marks.rank.loc[["Top-K", "EViT"], ("coco", 0.5)].tolist() == ["best1", "worst1"]
    assert not marks.above_baseline["coco"].any(axis=None)
    assert (marks.rank[("imagenet", 0.25)] == "").all()


def test_marks_with_few_values_and_ties():
    columns = pd.MultiIndex.from_tuples([("x", 0.5), ("x", 0.7), ("x", 0.9)], names=["dataset", "r"])
    nan = math.nan
    table = pd.DataFrame(
        [[50.0, 50.0, 50.0], [10.0, 7.0, 40.0], [nan, 7.0, 30.0], [nan, 7.0, 20.0], [nan, 7.0, 10.0], [nan, nan, 5.0]],
        index=["base", "a", "b", "c", "d", "e"],
        columns=columns,
    )
    rank = collate.rank_marks(table).rank
    assert rank[("x", 0.5)].tolist() == ["", "best1", "", "", "", ""]  # one value: best only
    assert rank[("x", 0.7)].tolist() == ["", "best1", "best1", "best1", "best1", ""]  # all tied: best wins
    assert rank[("x", 0.9)].tolist() == ["", "best1", "best2", "best3", "worst2", "worst1"]  # 5 values: 3 + 2


def test_beside_paper(runs: pd.DataFrame):
    both = collate.beside_paper(runs, BASE)
    topk = paper_value(BASE, "imagenet", "topk", "0.5")
    cell = [both.loc["Top-K", ("imagenet", 0.5, source)] for source in ("ours", "paper", "difference")]
    assert cell == [79.05, topk, pytest.approx(79.05 - topk)]
    baseline = paper_value(BASE, "imagenet", "deit", "1.0")
    assert both.loc["DeiT-B", ("imagenet", 0.9, "difference")] == pytest.approx(81.90 - baseline)
    assert math.isnan(both.loc["ToMe", ("imagenet", 0.25, "paper")])  # "–" in the paper
    assert math.isnan(both.loc["SiT", ("imagenet", 0.5, "difference")])  # no run of ours
    long = collate.table6_long(runs, BASE, paper=True).set_index(["dataset", "method", "keep_rate"])
    assert long.loc[("imagenet", "topk", 0.5), "difference"] == pytest.approx(79.05 - topk)
    assert long.loc[("imagenet", "tome", 0.5), ["mark", "above_baseline"]].tolist() == ["best1", True]
    assert long.loc[("imagenet", "deit", 1.0), ["mark", "above_baseline"]].tolist() == ["", False]
    assert long["above_baseline"].dtype == bool
    with pytest.raises(ValueError, match=f"no {SMALL} numbers.*main paper"):
        collate.beside_paper(runs, SMALL)


def test_runs_on_data_the_paper_has_not_stand_beside_its_numbers_on_its_datasets(tmp_path: Path):
    write_run(tmp_path / "a", TINY, "demo", "dpc_knn", 0.5, acc(40.0))
    write_run(tmp_path / "b", TINY, "demo", "topk", 0.7, acc(35.0))
    write_run(tmp_path / "c", SMALL, "demo", "topk", 0.7, acc(38.0))
    runs = collate.collect_runs(tmp_path)
    reference = collate.paper_reference(runs, TINY)
    assert list(reference.index) == ["DeiT-T", "Top-K", "DPC-KNN"]
    assert list(reference.columns) == [(d, r) for d in ("imagenet", "nabirds", "coco", "nuswide") for r in (0.5, 0.7)]
    assert reference.loc["DPC-KNN", ("nabirds", 0.5)] == paper_value(TINY, "nabirds", "dpc_knn", "0.5")
    assert reference.loc["DeiT-T", ("coco", 0.7)] == paper_value(TINY, "coco", "deit", "1.0")
    assert collate.paper_reference(runs, SMALL) is None  # the paper has no DeiT-S numbers
    write_run(tmp_path / "d", TINY, "imagenet", "topk", 0.7, acc(65.0))
    assert collate.paper_reference(collate.collect_runs(tmp_path), TINY) is None  # beside_paper shows them
    text = collate.write_backbone(runs, TINY, tmp_path, paper=True)
    assert "The paper has no results on demo" in text and (tmp_path / f"table6_{TINY}_paper.csv").is_file()
    page = (tmp_path / f"table6_{TINY}.html").read_text()
    assert page.count('<table class="table6">') == 2 and page.count("bold: above the DeiT baseline") == 1


def test_paper_csv_found_from_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    paper = collate.paper_results()
    assert set(paper["backbone"]) == {BASE, TINY}
    assert list(dict.fromkeys(paper["method"]))[1:] == list(collate.METHODS)


def test_html(runs: pd.DataFrame):
    table = collate.table6(runs, BASE)
    marks = collate.rank_marks(table)
    page = collate.table6_html(table, marks, caption="DeiT-B <test>")
    assert '<td class="best1 above-baseline" title="best1">82.50</td>' in page
    assert '<td class="worst1" title="worst1">63.33</td>' in page
    assert len(re.findall(r'<td class="worst2" title="worst2">74\.00</td>', page)) == 2
    assert '<td class="best1 above-baseline" title="best1">81.95</td>' in page  # the only value of its column
    assert '<td colspan="4">81.90</td>' in page and "DeiT-B &lt;test&gt;" in page
    assert page.count("<tr>") == 1 + 13 + 1  # headings, methods, r row (the baseline row has a class)
    theirs = collate.beside_paper(runs, BASE).xs("paper", axis=1, level="source")
    topk = paper_value(BASE, "imagenet", "topk", "0.5")
    page = collate.table6_html(table, marks, paper=theirs)
    assert f'79.05<span class="paper">paper {topk:.2f} ({79.05 - topk:+.2f})</span>' in page
    for name in ("best1", "best2", "best3", "worst1", "worst2", "worst3", "above-baseline"):
        assert f".{name} " in collate.TABLE6_CSS


def test_command_line(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        collate.main([str(runs_dir), str(out), "--paper"])
    assert f"no {SMALL} numbers" in caplog.text
    for backbone in (BASE, TINY, SMALL):
        assert (out / f"table6_{backbone}.csv").is_file() and (out / f"table6_{backbone}_long.csv").is_file()
        assert (out / f"table6_{backbone}.html").read_text().startswith("<style>")
    assert (out / f"table6_{BASE}_vs_paper.csv").is_file() and not (out / f"table6_{SMALL}_vs_paper.csv").exists()
    wide = pd.read_csv(out / f"table6_{BASE}.csv", header=[0, 1], index_col=0)
    assert wide.loc["Top-K", ("imagenet", "0.5")] == 79.05
    assert len(pd.read_csv(out / "runs.csv")) == 15
    printed = capsys.readouterr().out
    assert "Table 6, DeiT-B" in printed and "**82.50** ▲1" in printed and "63.33 ▼1" in printed
    assert "Ours − paper" in printed
    with pytest.raises(SystemExit) as exit_:
        collate.main([str(tmp_path / "nowhere"), str(out)])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        collate.main(["--help"])
    assert exit_.value.code == 0 and "--paper" in capsys.readouterr().out


def test_a_held_out_split_selects_the_reported_test_score(tmp_path: Path):
    """With held-out evaluations the epoch and source are chosen on them (epoch 1's EMA: 55.0), and the test score
    of that choice is reported (71.0), not the best test score (74.0 at epoch 0)."""
    lines = [
        {"test_acc1": 74.0, "ema_test_acc1": 70.0, "heldout_acc1": 50.0, "ema_heldout_acc1": 49.0},
        {"test_acc1": 72.0, "ema_test_acc1": 71.0, "heldout_acc1": 54.0, "ema_heldout_acc1": 55.0},
    ]
    write_run(tmp_path / "held", SMALL, "imagenet", "topk", 0.5, lines)
    (row,) = collate.collect_runs(tmp_path).to_dict("records")
    assert (row["value"], row["best_epoch"], row["source"], row["selected_on"]) == (71.0, 1, "ema", "heldout")
