"""The runs of a directory as a table: each run's best test score, as the study selected it (SPEC §5.6).

A run is a folder holding ``config.json`` and ``metrics.jsonl`` as ``train/main.py`` writes them; a run with an
empty ``reduction_loc`` is the unreduced DeiT baseline (method ``deit``, keep rate 1.0, as in the paper's CSV).
"""

import json
import logging
import math
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

BASELINE = "deit"
METRICS = {"map": "mAP", "acc1": "top1"}  # metrics.jsonl key suffix → the paper CSV's metric name
KEY = ["backbone", "dataset", "method", "keep_rate"]
COLUMNS = [*KEY, "metric", "value", "source", "best_epoch", "selected_on", "epochs", "epochs_planned", "run"]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_run(folder: Path) -> dict[str, object]:
    """One run folder as a row of :func:`collect_runs`.

    The score is chosen as the study chose it (SPEC §5.6): the best over epochs of the model's and the EMA's
    evaluation on the test split (``test_acc1``/``ema_test_acc1``, or ``test_map``/``ema_test_map``); ties go to
    the earlier epoch, the model before its EMA. A run trained with ``--heldout-fraction`` selects instead on its
    held-out split (``heldout_*``), as its best checkpoint did, and reports the test score of that selection.

    Raises:
        ValueError: config.json or metrics.jsonl is missing, unreadable, or holds no test evaluation yet.
    """
    if not (folder / "metrics.jsonl").is_file():
        raise ValueError(
            f"{folder}: no metrics.jsonl yet (train/main.py writes it after the first epoch): "
            "wait for that epoch, or remove the folder"
        )
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: metrics.jsonl without config.json: not a run folder of train/main.py")
    try:
        config = json.loads((folder / "config.json").read_text())
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        backbone, dataset, reduction_loc = config["model"], config["dataset"], config["reduction_loc"]
        method, keep_rate = (BASELINE, 1.0) if not reduction_loc else (config["method"], float(config["r"]))
        heldout = any(key.startswith("heldout_") for line in lines for key in line)
        split = "heldout" if heldout else "test"
        found = {  # (selection score, test score, source, epoch)
            suffix: [
                (line[f"{prefix}{split}_{suffix}"], line[f"{prefix}test_{suffix}"], source, line["epoch"])
                for line in lines
                for prefix, source in (("", "model"), ("ema_", "ema"))
                if _finite(line.get(f"{prefix}test_{suffix}")) and _finite(line.get(f"{prefix}{split}_{suffix}"))
            ]
            for suffix in METRICS
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{folder}: unreadable or incomplete run files ({type(error).__name__}: {error}); finish or remove the run"
        ) from error
    suffix = next((suffix for suffix, scores in found.items() if scores), None)
    if suffix is None:
        raise ValueError(f"{folder}: metrics.jsonl holds no test evaluation (test_acc1 or test_map) yet")
    _, value, source, epoch = max(found[suffix], key=lambda score: score[0])
    return {
        "backbone": backbone,
        "dataset": dataset,
        "method": method,
        "keep_rate": round(keep_rate, 6),
        "metric": METRICS[suffix],
        "value": float(value),
        "source": source,
        "best_epoch": epoch,
        "selected_on": split,
        "epochs": len({line["epoch"] for line in lines if f"test_{suffix}" in line}),
        "epochs_planned": config.get("epochs"),
        "run": str(folder),
    }


def collect_runs(runs_dir: str | Path) -> pd.DataFrame:
    """Every run found under ``runs_dir`` (recursively), one row each, in the paper CSV's terms.

    Returns:
        Columns ``COLUMNS``: backbone, dataset, method (``deit`` for the baseline), keep_rate (1.0 for the
        baseline), metric (``top1`` or ``mAP``), value, source (``model`` or ``ema``), best_epoch, epochs (done),
        epochs_planned, run (the folder). Unreadable or incomplete runs are skipped with a warning; runs still
        training (fewer epochs than planned) are kept with a warning; of two runs with the same (backbone, dataset,
        method, keep_rate) the better is kept, with a warning.

    Raises:
        FileNotFoundError: ``runs_dir`` is not a directory.
        ValueError: it holds no run, or no complete one.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} does not exist: pass the --output-dir of train/main.py")
    folders = sorted({path.parent for name in ("config.json", "metrics.jsonl") for path in root.rglob(name)})
    if not folders:
        raise ValueError(f"no runs under {root}: a run is a folder with config.json and metrics.jsonl (train/main.py)")
    rows = []
    for folder in folders:
        try:
            row = read_run(folder)
        except ValueError as error:
            log.warning("skipping %s", error)
            continue
        if isinstance(row["epochs_planned"], int) and row["epochs"] < row["epochs_planned"]:
            log.warning(
                "%s: %d of %d epochs done; its best so far is used", folder, row["epochs"], row["epochs_planned"]
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"none of the {len(folders)} run folders under {root} is complete (see the warnings)")
    runs = pd.DataFrame(rows, columns=COLUMNS).sort_values("value", ascending=False, kind="stable")
    duplicate = runs.duplicated(KEY)
    kept = runs[~duplicate].set_index(KEY)
    for row in runs[duplicate].itertuples(index=False):
        best = kept.loc[(row.backbone, row.dataset, row.method, row.keep_rate)]
        log.warning(
            "two runs of %s on %s, %s r=%g: keeping %s (%.2f), ignoring %s (%.2f)",
            *(row.backbone, row.dataset, row.method, row.keep_rate),
            *(best["run"], best["value"], row.run, row.value),
        )
    return runs[~duplicate].sort_values(KEY).reset_index(drop=True)
