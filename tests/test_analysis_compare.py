"""analysis.compare: which pairs each setting forms, and the rows it writes for hand-made extractions."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import compare
from analysis.compare import comparable, pairs
from analysis.extraction import Extraction
from analysis.metrics.features import compare_features
from analysis.models import Model

TINY, SMALL = "deit_tiny_patch16_224", "deit_small_patch16_224"


def model(method: str, r: float, backbone: str = TINY, dataset: str = "demo") -> Model:
    blocks = () if method == "deit" else (3, 6, 9)
    return Model(dataset, backbone, method, r, blocks, Path(f"{dataset}-{backbone}-{method}-{r}.npz"))


def names(found: list[tuple[Model, Model]]) -> set[tuple[str, str]]:
    return {(f"{a.dataset}:{a.name}", f"{b.dataset}:{b.name}") for a, b in found}


def test_pairs_of_each_setting():
    topk5, topk7, topk9 = model("topk", 0.5), model("topk", 0.7), model("topk", 0.9)
    small5, dpc5, l1_7, deit = model("topk", 0.5, SMALL), model("dpc_knn", 0.5), model("l1", 0.7), model("deit", 1.0)
    elsewhere = model("topk", 0.5, dataset="other")
    models = [topk5, topk7, topk9, small5, dpc5, l1_7, deit, elsewhere]
    by = {m: f"{m.dataset}:{m.name}" for m in models}
    assert names(pairs(models, "rates")) == {(by[topk7], by[topk5]), (by[topk9], by[topk5]), (by[topk9], by[topk7])}
    assert names(pairs(models, "capacity")) == {(by[small5], by[topk5])}
    assert names(pairs(models, "datasets")) == {(by[topk5], by[elsewhere])}
    found = names(pairs(models, "models"))
    # same r, different methods, both orders; ℓ1 and the baseline against every r (of the same backbone)
    assert {(by[topk5], by[dpc5]), (by[dpc5], by[topk5]), (by[l1_7], by[topk5]), (by[topk9], by[l1_7])} <= found
    assert {(by[deit], by[topk9]), (by[dpc5], by[deit])} <= found
    assert (by[topk7], by[dpc5]) not in found and (by[topk5], by[small5]) not in found
    assert not comparable(topk5, topk5, "rates") and not comparable(
        model("sit", 0.5), model("sit", 0.5, dataset="x"), "datasets"
    )


def extraction(
    method: str, r: float, kept: list[np.ndarray], assignment: list[np.ndarray], score: float, rng
) -> Extraction:
    """A hand-made extraction on a 4×4 grid: 5 images, 3 stages at blocks 1, 2, 3 of a 4-block model."""
    n, width = 5, 3
    return Extraction(
        model=TINY, method=method, keep_rate=r, reduction_loc=[1, 2, 3], blocks=[1, 2, 3], dataset="demo",
        split="eval", checkpoint="x", weights="model", num_classes=2, multi_label=False, metric="acc1", score=score,
        grid=4, config={}, targets=np.arange(n) % 2, logits=np.zeros((n, 2)), cls=rng.normal(size=(n, 4, width)),
        assignment=assignment, kept=kept, representatives=kept, token_counts=[(k >= 0).sum(1) for k in kept],
    )  # fmt: skip


def test_rows_match_the_metrics_and_the_order_of_the_study(tmp_path, cpu_rng):
    rng = np.random.default_rng(int(cpu_rng.initial_seed()))
    high = [np.tile(np.arange(12), (5, 1)), np.tile(np.arange(8), (5, 1)), np.tile(np.arange(4), (5, 1))]
    low = [np.tile(np.arange(4, 12), (5, 1)), np.tile(np.arange(2, 6), (5, 1)), np.tile([7, -1], (5, 1))]
    fine = [rng.integers(0, k, (5, 16)) for k in (6, 4, 3)]  # the merging partitions of the higher-r model
    coarse = [f // 2 for f in fine]  # each coarse cluster is a union of fine ones
    extraction("dpc_knn", 0.75, high, fine, 60.0, rng).save(tmp_path / "high.npz")
    extraction("dpc_knn", 0.5, low, coarse, 55.0, rng).save(tmp_path / "low.npz")
    compare.main([str(tmp_path), str(tmp_path / "out"), "--settings", "rates"])
    table = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert set(table.model_a) == {f"{TINY}/dpc_knn/r0.75"} and set(table.score_diff) == {5.0}
    value = table.set_index(["block", "metric"])["mean"]
    # stage 1: 8 shared of 12 ∪ 8 = 12 → IoU 8/12, IoA 8/8; stage 3: {7} ∩ {0..3} = ∅
    assert value[(1, "IoU")] == pytest.approx(8 / 12) and value[(1, "IoA")] == 1.0 and value[(3, "IoU")] == 0
    assert value[(2, "IoU")] == pytest.approx(4 / 8) and value[(2, "IoA")] == 1.0  # {2..5} ⊂ {0..7}
    # rates: labels_true = the lower-r model, so the nested finer partition has homogeneity 1
    assert value[(1, "Homogeneity")] == pytest.approx(1.0) and value[(2, "Homogeneity")] == pytest.approx(1.0)
    assert value[(1, "IoU_lower_bound")] == pytest.approx(max(0, 12 + 8 - 16) / 16)
    # CLS features: the blocks of FEATURE_BLOCKS the 4-block model has (3), as the metric functions give them
    high_cls, low_cls = (
        Extraction.load(tmp_path / f"{name}.npz").cls[:, 3].T.astype(np.float64) for name in ("high", "low")
    )
    for metric, expected in compare_features(high_cls, low_cls).items():
        assert value[(3, metric)] == pytest.approx(expected)
    assert set(table[table.family == "features"].block) == {3}
    correlations = pd.read_csv(tmp_path / "out" / "correlations.csv")
    assert (correlations.n == 1).all() and correlations.spearman.isna().all()  # one pair: no correlation


def test_no_extraction_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main([str(tmp_path), str(tmp_path / "out")])
    assert "python -m analysis.extract" in capsys.readouterr().err


def test_same_patterns_on_two_datasets_are_identical_maps(tmp_path, cpu_rng):
    """The datasets setting compares dataset-averaged depth maps: the same model on two datasets gives the
    identity values of SPEC §13 (KL 0, JSD 0, PCC 1, SCC 1, EMD 0, SIM 1)."""
    rng = np.random.default_rng(int(cpu_rng.initial_seed()))
    kept = [np.stack([rng.permutation(16)[:k] for _ in range(5)]) for k in (12, 8, 4)]
    same = extraction("topk", 0.75, kept, [np.zeros((5, 16), np.int64)] * 3, 50.0, rng)
    same.save(tmp_path / "a.npz")
    same.dataset = "elsewhere"
    same.save(tmp_path / "b.npz")
    compare.main([str(tmp_path), str(tmp_path / "out"), "--settings", "datasets"])
    value = pd.read_csv(tmp_path / "out" / "comparisons.csv").set_index("metric")["mean"]
    expected = {"KL": 0, "JSD": 0, "JSD_study": 0, "PCC": 1, "SCC": 1, "EMD": 0, "SIM": 1}
    assert value.to_dict() == pytest.approx(expected, abs=1e-9)
    maps = np.load(tmp_path / "out" / "depth_maps.npz")
    assert sorted(maps.files) == [f"demo|{TINY}/topk/r0.75", f"elsewhere|{TINY}/topk/r0.75"]


def two_rates(folder: Path, rng, images: tuple[int, int] = (5, 5)) -> None:
    """A rates pair of DPC-KNN extractions (r 0.75 and 0.5) in ``folder``, of ``images`` images each."""
    for name, r, k, n in (("high", 0.75, (12, 8, 4), images[0]), ("low", 0.5, (8, 4, 2), images[1])):
        kept = [np.tile(np.arange(count), (n, 1)) for count in k]
        made = extraction("dpc_knn", r, kept, [rng.integers(0, 2, (n, 16)) for _ in k], 50.0 + 10 * r, rng)
        made.targets, made.logits, made.cls = np.arange(n) % 2, np.zeros((n, 2)), rng.normal(size=(n, 4, 3))
        made.token_counts = [(a >= 0).sum(1) for a in kept]
        made.save(folder / f"{name}.npz")


def test_unreadable_files_are_named_skipped_and_counted(tmp_path, cpu_rng, caplog):
    rng = np.random.default_rng(int(cpu_rng.initial_seed()))
    two_rates(tmp_path, rng)
    truncated = tmp_path / "runs" / "truncated.npz"
    truncated.parent.mkdir()
    truncated.write_bytes((tmp_path / "high.npz").read_bytes()[:300])
    (tmp_path / "notes.npz").write_text("not an archive\n")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))  # a NumPy archive of another kind: ignored, not counted
    (tmp_path / "run.npz.parts").mkdir()  # an unfinished extraction's parts are no input
    np.savez(tmp_path / "run.npz.parts" / "000000000-000000004.npz", x=np.zeros(3))
    with caplog.at_level(logging.INFO):
        compare.main([str(tmp_path), str(tmp_path / "out")])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in (truncated, tmp_path / "notes.npz"):
        assert any(str(path) in w and "no complete .npz archive" in w for w in warnings), path
    assert any("run.npz.parts" in w and "unfinished extraction" in w for w in warnings)
    assert not any("other.npz" in w for w in warnings)
    assert "2 models, " in caplog.records[-1].getMessage() and "2 unreadable files skipped" in caplog.text
    table = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert set(table.model_a) == {f"{TINY}/dpc_knn/r0.75"} and not table.empty


def test_pairs_of_other_images_are_left_out_with_a_warning(tmp_path, cpu_rng, caplog):
    rng = np.random.default_rng(int(cpu_rng.initial_seed()))
    two_rates(tmp_path, rng, images=(5, 4))  # e.g. extracted with another --limit
    with caplog.at_level(logging.WARNING):
        summary = compare.run(tmp_path, tmp_path / "out", ("rates",))
    assert summary.rows == 0 and list(summary.skipped_pairs.values()) == ["5 against 4 images of demo/eval"]
    assert "high.npz" in caplog.text and "low.npz" in caplog.text and "same --limit" in caplog.text
    assert "rates" not in summary.missing  # the pair exists; it was left out


def test_one_model_writes_readable_tables_and_says_what_each_setting_needs(tmp_path, cpu_rng):
    rng = np.random.default_rng(int(cpu_rng.initial_seed()))
    two_rates(tmp_path, rng)
    (tmp_path / "low.npz").unlink()
    summary = compare.run(tmp_path, tmp_path / "out")
    assert (len(summary.models), summary.rows) == (1, 0) and sorted(summary.missing) == sorted(compare.SETTINGS)
    assert "a keep rate other than 0.75" in summary.missing["rates"]
    assert "a backbone other than deit_tiny_patch16_224" in summary.missing["capacity"]
    assert "another method at r=0.75" in summary.missing["models"]
    assert "a dataset other than demo" in summary.missing["datasets"]
    for name in ("comparisons.csv", "correlations.csv", "models.csv"):
        frame = pd.read_csv(tmp_path / "out" / name)  # an empty table still has its columns
        assert len(frame.columns) > 1, name
    assert len(pd.read_csv(tmp_path / "out" / "models.csv")) == 3  # one row per stage
