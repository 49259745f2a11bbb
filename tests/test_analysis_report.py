"""The toolkit end to end: two tiny runs on the demo data → extraction → comparisons → figures → one HTML page."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import report

ROOT = Path(__file__).resolve().parents[1]


def train(runs: Path, method: str, r: str) -> None:
    """A few optimizer steps of DeiT-Tiny; 200 test images, more than its 192 CLS features (CCA needs it)."""
    command = [sys.executable, str(ROOT / "train" / "main.py"), "--method", method, "--r", r, "--epochs", "1"]
    command += ["--demo-train-size", "32", "--demo-test-size", "200", "--batch-size", "16", "--workers", "0"]
    command += ["--output-dir", str(runs), "--run-name", f"{method}_r{r}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_report_from_two_tiny_runs(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    for r in ("0.5", "0.7"):
        train(runs, "dpc_knn", r)
    report.main([str(runs), str(out), "--extract", "--limit", "200"])
    assert (runs / "dpc_knn_r0.5" / report.EXTRACTION).is_file()
    page = (out / "index.html").read_text()
    shown = re.findall(r'<img src="([^"]+)"', page)
    linked = re.findall(r'href="([^"]+)"', page)
    assert shown and all((out / path).is_file() for path in shown + linked), "the page links a missing file"
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


def test_report_of_a_missing_folder_says_what_is_expected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert "--output-dir of train/main.py" in capsys.readouterr().err
