"""One HTML page from a directory of runs: the study's tables, comparisons and figures.

    python -m analysis.report RUNS_DIR OUT_DIR [--extract] [--limit N] [--paper]

Runs the later steps on what it finds under RUNS_DIR: Table 6 from the runs (``analysis.collate``); with extraction
files (``*.npz`` of ``analysis.extract``, or made here for every run with ``--extract``) the comparisons
(``analysis.compare``) and the figures (``analysis.figures``). Writes OUT_DIR/index.html, which links everything
it shows (tables as CSV, figures as PNG and PDF) by relative paths, so the folder can be moved or shared.

One run is enough: its Table 6 row, keep rates, depth map and patterns, and for each comparison "nothing to
compare yet" with what would give it a pair. Runs still training, without an extraction or whose extraction
failed, and unreadable extraction files, are listed with the reason instead of stopping the report.
"""

import argparse
import html
import logging
from pathlib import Path

import pandas as pd

from analysis import collate, compare, extract, figures
from analysis.metrics.correlation import CORRELATIONS, MIN_PAIRS
from train import checkpoint as checkpoints

log = logging.getLogger(__name__)

EXTRACTION = "extraction.npz"
SHOWN = 200  # correlation rows on the page
STATISTICS = [f"{name}{suffix}" for name in CORRELATIONS for suffix in ("", "_p")]
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2 { font-weight: 600; } img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1.5em 0; } figcaption { font-size: 90%; color: #555; }
table.summary { border-collapse: collapse; font-size: 85%; }
table.summary td, table.summary th { padding: 2px 6px; border-bottom: 1px solid #ddd; text-align: right; }
"""


def extract_runs(runs_dir: Path, limit: int | None) -> dict[Path, str]:
    """Write ``extraction.npz`` into every run folder with a best checkpoint and no extraction of it yet (none, or
    one older than the checkpoint: the run went on). A run that cannot be extracted is named in a warning and left
    out; returns those run folders with the reason."""
    failed = {}
    for best in sorted(runs_dir.rglob(checkpoints.BEST)):
        target = best.parent / EXTRACTION
        if not stale(best.parent):
            continue
        log.info("extracting %s%s", best.parent, " again: its best checkpoint is newer" if target.is_file() else "")
        try:
            extract.main([str(best), str(target), *(["--limit", str(limit)] if limit else []), "--workers", "0"])
        except (OSError, ValueError) as error:
            log.warning("%s not extracted: %s", best.parent, error)
            failed[best.parent] = f"extraction failed: {error}"
    return failed


def stale(run: Path) -> bool:
    """Whether the run's best checkpoint has no extraction file, or one older than the checkpoint (the run went on)."""
    best, target = run / checkpoints.BEST, run / EXTRACTION
    return not target.is_file() or target.stat().st_mtime_ns < best.stat().st_mtime_ns


def extraction_status(runs: pd.DataFrame, extracted: set[Path], failed: dict[Path, str] | None) -> dict[str, str]:
    """Why the runs of the table without a current extraction file have none (run → reason); ``failed`` is
    :func:`extract_runs`' answer, None when extraction was not asked for."""
    status = {}
    for run in map(Path, runs["run"]):
        best, target = run / checkpoints.BEST, run / EXTRACTION
        if failed is not None and run in failed:
            status[str(run)] = failed[run]
        elif not best.is_file():
            status[str(run)] = f"no {checkpoints.BEST} (train/main.py writes it after an evaluation)"
        elif run not in extracted:
            status[str(run)] = "not extracted: pass --extract"
        elif target.is_file() and stale(run):
            status[str(run)] = f"{EXTRACTION} is older than {checkpoints.BEST}: pass --extract to extract it again"
    return status


def listing(items: dict[str, str], caption: str) -> str:
    """A caption and a list of "item: note" lines."""
    lines = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in items.items())
    return f"<p>{html.escape(caption)}</p><ul>{lines}</ul>"


def summary_table(frame: pd.DataFrame, caption: str) -> str:
    return f"<p>{html.escape(caption)}</p>\n" + frame.to_html(
        classes="summary", float_format="{:.3f}".format, na_rep="–"
    )


def figure_html(png: Path, out: Path) -> str:
    relative = png.relative_to(out).as_posix()
    name = png.stem
    return (
        f'<figure><img src="{relative}" alt="{name}">'
        f'<figcaption>{name} (<a href="{relative[:-4]}.pdf">PDF</a>)</figcaption></figure>'
    )


def correlation_cells(correlations: pd.DataFrame) -> pd.DataFrame:
    """The correlations table for the page: an undefined statistic reads "undefined: <why>", not NaN."""
    shown = correlations.drop(columns="undefined").astype({name: object for name in STATISTICS})
    for name in STATISTICS:
        shown[name] = [
            f"undefined: {why}" if why else f"{value:.3f}"
            for value, why in zip(correlations[name], correlations["undefined"], strict=True)
        ]
    return shown


def model_cells(models: pd.DataFrame) -> pd.DataFrame:
    """Per model its score and, per block of a stage, the actual keep rate "mean ± std" over images."""
    models = models.assign(
        kept=models.keep_rate_mean.map("{:.3f}".format) + models.keep_rate_std.map(" ± {:.3f}".format)
    )
    table = models.pivot_table(
        index=["dataset", "model", "metric", "score"], columns="block", values="kept", aggfunc="first"
    )
    table = table.rename(columns=lambda block: "no reduction" if block == -1 else f"block {block}").fillna("")
    return table.rename_axis(columns=None).reset_index().set_index("model")


def comparison_sections(runs_dir: Path, out: Path) -> list[str]:
    """The comparisons, the models' keep rates, the correlations and the figures of the extraction files.

    Raises:
        FileNotFoundError: no readable extraction file under ``runs_dir``.
    """
    comparisons = out / "comparisons"
    summary = compare.run(runs_dir, comparisons)
    parts = [
        '<p><a href="comparisons/comparisons.csv">every pair (CSV)</a>, '
        '<a href="comparisons/correlations.csv">correlations (CSV)</a>, '
        '<a href="comparisons/models.csv">models (CSV)</a></p>'
    ]
    if summary.skipped_files:
        files = {str(path): why for path, why in summary.skipped_files.items()}
        parts.append(listing(files, f"{len(files)} extraction files skipped, unreadable:"))
    if summary.skipped_pairs:
        pairs = {f"{a} and {b}": f"they cover {why}" for (a, b), why in summary.skipped_pairs.items()}
        parts.append(listing(pairs, f"{len(pairs)} pairs left out: extract both from the same split and --limit"))
    table = pd.read_csv(comparisons / "comparisons.csv")
    counts = table.drop_duplicates(["setting", *compare.PAIR[1:]]).groupby("setting").size()
    settings = {
        setting: f"nothing to compare yet: needs {summary.missing[setting]}"
        if setting in summary.missing
        else f"{counts.get(setting, 0)} pair(s)"
        for setting in compare.SETTINGS
    }
    parts.append(listing(settings, f"Extracted models: {len(summary.models)}. Pairs per setting:"))
    parts.append(
        summary_table(model_cells(pd.read_csv(comparisons / "models.csv")), "Per model: actual keep rate per stage.")
    )
    if not table.empty:
        means = table.pivot_table(index=["setting", "metric"], columns="block", values="mean", aggfunc="mean")
        parts.append(summary_table(means, "Mean over pairs per setting, metric and block (-1: whole-image maps)."))
    correlations = pd.read_csv(comparisons / "correlations.csv").fillna({"undefined": ""})
    enough = correlations[correlations.n >= MIN_PAIRS]
    few = len(correlations) - len(enough)
    if not enough.empty:
        caption = f"Correlation of each metric with the score difference A − B (groups of ≥ {MIN_PAIRS} pairs"
        caption += f"; the first {SHOWN} rows, all in the CSV)." if len(enough) > SHOWN else ")."
        parts.append(summary_table(correlation_cells(enough.head(SHOWN)), caption))
    if few:
        parts.append(f"<p>ρ undefined for {few} groups: fewer than {MIN_PAIRS} pairs each (listed in the CSV).</p>")
    elif correlations.empty:
        parts.append("<p>No correlations yet: no group of pairs with a score difference.</p>")
    drawn = figures.draw_all(comparisons, out / "figures") + figures.patterns(summary.models, out / "figures")
    pngs = [p for p in drawn if p.suffix == ".png"]
    parts.append("<h2>Figures</h2>" + "\n".join(figure_html(p, out) for p in pngs))
    return parts


def build(runs_dir: Path, runs: pd.DataFrame, out: Path, paper: bool, failed: dict[Path, str] | None = None) -> Path:
    """Tables, comparisons and figures into ``out``; returns the index.html path.

    Args:
        runs: :func:`analysis.collate.collect_runs` of ``runs_dir``.
        failed: :func:`extract_runs`' answer (runs that could not be extracted), None when it was not run.
    """
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>Token reduction: {html.escape(str(runs_dir))}</h1>"]
    tables = out / "tables"
    tables.mkdir(exist_ok=True)
    runs.to_csv(tables / "runs.csv", index=False)
    parts.append('<h2>Performance (Table 6 layout)</h2><p><a href="tables/runs.csv">all runs (CSV)</a></p>')
    training = runs[runs.epochs < runs.epochs_planned.fillna(0)]
    if not training.empty:
        notes = {
            run: f"{done} of {planned:.0f} epochs: its best so far"
            for run, done, planned in training[["run", "epochs", "epochs_planned"]].itertuples(index=False)
        }
        parts.append(listing(notes, "Still training (or stopped early):"))
    parts.append(f"<style>{collate.TABLE6_CSS}</style>")
    for backbone in sorted(set(runs["backbone"])):
        collate.write_backbone(runs, backbone, tables, paper)
        fragment = (tables / f"table6_{backbone}.html").read_text()
        parts.append(fragment[fragment.index("</style>") + len("</style>") :])  # the style once, above
    parts.append("<h2>Comparisons</h2>")
    extracted = {path.parent for path in runs_dir.rglob("*.npz")}
    status = extraction_status(runs, extracted, failed)
    if status:
        parts.append(listing(status, f"{len(status)} of the {len(runs)} runs have no current extraction file:"))
    try:
        parts += comparison_sections(runs_dir, out)
    except FileNotFoundError as error:
        parts.append(f"<p>Nothing to compare: {html.escape(str(error))}.</p>")
        log.warning("nothing to compare: %s", error)
    index = out / "index.html"
    body = "\n".join(parts)
    index.write_text(
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>tokred report</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="folder of runs of train/main.py (searched recursively)")
    parser.add_argument("out_dir", type=Path, help="folder for index.html, tables, comparisons and figures")
    parser.add_argument("--extract", action="store_true", help=f"first write {EXTRACTION} into every run lacking one")
    parser.add_argument("--limit", type=int, help="with --extract: only the first N evaluation images")
    parser.add_argument("--paper", action="store_true", help="show the paper's Table 6 numbers beside ours")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = collate.collect_runs(args.runs_dir)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    failed = extract_runs(args.runs_dir, args.limit) if args.extract else None
    index = build(args.runs_dir, runs, args.out_dir, args.paper, failed)
    log.info("report: %s", index)


if __name__ == "__main__":
    main()
