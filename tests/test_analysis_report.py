"""The toolkit end to end: tiny runs on the demo data → extraction → comparisons → figures → one HTML page; and
what the report says when there is little or nothing to compare."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import collate, compare, report

ROOT = Path(__file__).resolve().parents[1]


def train(runs: Path, method: str, r: str) -> Path:
    """A few optimizer steps of DeiT-Tiny; 200 test images, more than its 192 CLS features (CCA needs it)."""
    command = [sys.executable, str(ROOT / "train" / "main.py"), "--method", method, "--r", r, "--epochs", "1"]
    command += ["--demo-train-size", "32", "--demo-test-size", "200", "--batch-size", "16", "--workers", "0"]
    command += ["--output-dir", str(runs), "--run-name", f"{method}_r{r}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return runs / f"{method}_r{r}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny DPC-KNN r=0.5 run, not extracted; each test works on a copy."""
    return train(tmp_path_factory.mktemp("trained"), "dpc_knn", "0.5")


def copy_run(run: Path, runs: Path, name: str | None = None) -> Path:
    return Path(shutil.copytree(run, runs / (name or run.name)))


def links_resolve(page: str, out: Path) -> list[str]:
    """The figures the page shows, after checking that every file it shows or links exists."""
    shown = re.findall(r'<img src="([^"]+)"', page)
    linked = re.findall(r'href="([^"]+)"', page)
    assert all((out / path).is_file() for path in shown + linked), "the page links a missing file"
    return shown


def paper_value(backbone: str, dataset: str, method: str, keep_rate: str) -> float:
    with open(ROOT / "analysis" / "data" / "paper_table6.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["dataset"] == dataset and row["method"] == method]
    return next(float(r["value"]) for r in rows if (r["backbone"], r["keep_rate"]) == (backbone, keep_rate))


def test_report_from_two_tiny_runs(tmp_path, trained):
    runs, out = tmp_path / "runs", tmp_path / "report"
    copy_run(trained, runs)
    train(runs, "dpc_knn", "0.7")
    report.main([str(runs), str(out), "--extract", "--limit", "200"])
    assert (runs / "dpc_knn_r0.5" / report.EXTRACTION).is_file()
    page = (out / "index.html").read_text()
    shown = links_resolve(page, out)
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "figures").glob("*.png"))
    assert sorted(shown) == pngs, "every figure drawn is on the page, and only those"
    assert all(path.with_suffix(".pdf").is_file() for path in (out / "figures").glob("*.png"))
    assert {"figures/consistency_rates_IoA.png", "figures/consistency_rates_Homogeneity.png"} <= set(shown)
    assert any(name.startswith("figures/patterns_demo_") for name in shown)
    assert 'class="table6"' in page and "DPC-KNN" in page
    table = pd.read_csv(out / "comparisons" / "comparisons.csv")
    rates = table[table.setting == "rates"]
    assert set(rates.model_a) == {"deit_tiny_patch16_224/dpc_knn/r0.7"}
    assert {"IoU", "IoA", "Homogeneity", "NMI", "Procrustes", "CKA", "PWCCA"} <= set(rates.metric)
    assert rates[rates.metric.isin(["IoU", "IoA", "Homogeneity", "NMI"])]["mean"].between(0, 1).all()
    assert "<code>rates</code>: 1 pair(s)" in page and "ρ undefined for" in page  # one pair per group: no ρ


def test_report_of_one_run(tmp_path, trained):
    """The README's report after `make demo`: one run gives its Table 6 row beside the paper, its patterns, and
    "nothing to compare yet" (with what would be needed) for every setting."""
    runs, out = tmp_path / "runs", tmp_path / "report"
    copy_run(trained, runs)
    report.main([str(runs), str(out), "--extract", "--paper", "--limit", "40"])
    page = (out / "index.html").read_text()
    ours = pd.read_csv(out / "tables" / "runs.csv")["value"].item()
    assert 'class="table6"' in page and f">{ours:.2f}</td>" in page
    paper = paper_value("deit_tiny_patch16_224", "imagenet", "dpc_knn", "0.5")
    assert "The paper has no results on demo" in page and f"<td>{paper:.2f}</td>" in page
    assert page.count("nothing to compare yet: needs") == len(compare.SETTINGS)
    assert "a keep rate other than 0.5" in page and "No correlations yet" in page
    shown = links_resolve(page, out)
    assert "figures/depth_demo.png" in shown and any(name.startswith("figures/patterns_demo_") for name in shown)
    keep_rates = pd.read_csv(out / "comparisons" / "models.csv")
    assert list(keep_rates.block) == [3, 6, 9] and keep_rates.keep_rate_mean[0] == 0.5  # 98 of 196 (SPEC §0.1)
    assert "block 3" in page and "0.500 ± 0.000" in page


def test_report_without_extractions_or_runs_says_so(tmp_path, trained, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path), str(tmp_path / "out")])
    assert "no runs under" in capsys.readouterr().err
    runs, out = tmp_path / "runs", tmp_path / "report"
    run = copy_run(trained, runs)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"epochs": 3}))  # as if still training
    report.main([str(runs), str(out)])
    page = (out / "index.html").read_text()
    assert "not extracted: pass --extract" in page and "Nothing to compare: no extraction files under" in page
    assert re.search(r"Still training.*1 of 3 epochs: its best so far", page)
    links_resolve(page, out)


def test_a_damaged_checkpoint_or_npz_does_not_stop_the_report(tmp_path, trained):
    runs, out = tmp_path / "runs", tmp_path / "report"
    copy_run(trained, runs)
    broken = copy_run(trained, runs, "broken")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"r": 0.7}))  # another row of the table
    best = broken / "best_checkpoint.pth"
    best.write_bytes(best.read_bytes()[:1000])
    (runs / "junk.npz").write_text("not an archive\n")
    report.main([str(runs), str(out), "--extract", "--limit", "20"])
    page = (out / "index.html").read_text()
    assert re.search(rf"<code>{re.escape(str(broken))}</code>: extraction failed", page)
    assert re.search(rf"1 extraction files skipped.*<code>{re.escape(str(runs / 'junk.npz'))}</code>", page)
    assert "Extracted models: 1." in page
    assert len(collate.collect_runs(runs)) == 2


def test_extraction_is_redone_only_when_missing_or_older_than_the_best_checkpoint(tmp_path, monkeypatch):
    for name in ("missing", "current", "stale"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "best_checkpoint.pth").write_bytes(b"")
    for name, seconds in (("current", 0), ("stale", -10)):  # the extraction's age relative to the checkpoint
        target = tmp_path / name / report.EXTRACTION
        target.write_bytes(b"")
        best = (tmp_path / name / "best_checkpoint.pth").stat().st_mtime_ns
        os.utime(target, ns=(best + seconds * 10**9,) * 2)
    done = []
    monkeypatch.setattr(report.extract, "main", lambda argv: done.append(Path(argv[0]).parent.name))
    assert report.extract_runs(tmp_path, None) == {} and done == ["missing", "stale"]


def test_report_of_a_missing_folder_says_what_is_expected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert "--output-dir of train/main.py" in capsys.readouterr().err
