"""One HTML page from a directory of runs: the study's tables, comparisons and figures.

    python -m analysis.report RUNS_DIR OUT_DIR [--extract] [--limit N] [--paper]

Runs the later steps on what it finds under RUNS_DIR: Table 6 from the runs (``analysis.collate``); with extraction
files (``*.npz`` of ``analysis.extract``, or made here for every run with ``--extract``) the comparisons
(``analysis.compare``) and the figures (``analysis.figures``). Writes OUT_DIR/index.html, which links everything
it shows (tables as CSV, figures as PNG and PDF) by relative paths, so the folder can be moved or shared.
"""

import argparse
import html
import logging
from pathlib import Path

import pandas as pd

from analysis import collate, compare, extract, figures
from analysis.metrics.correlation import MIN_PAIRS

log = logging.getLogger(__name__)

EXTRACTION = "extraction.npz"
SHOWN = 200  # correlation rows on the page
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2 { font-weight: 600; } img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1.5em 0; } figcaption { font-size: 90%; color: #555; }
table.summary { border-collapse: collapse; font-size: 85%; }
table.summary td, table.summary th { padding: 2px 6px; border-bottom: 1px solid #ddd; text-align: right; }
"""


def extract_runs(runs_dir: Path, limit: int | None) -> None:
    """Write ``extraction.npz`` into every run folder with a best checkpoint and no extraction yet."""
    for best in sorted(runs_dir.rglob("best_checkpoint.pth")):
        target = best.parent / EXTRACTION
        if not target.is_file():
            log.info("extracting %s", best.parent)
            extract.main([str(best), str(target), *(["--limit", str(limit)] if limit else []), "--workers", "0"])


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


def build(runs_dir: Path, out: Path, paper: bool) -> Path:
    """Tables, comparisons and figures into ``out``; returns the index.html path."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>Token reduction: {html.escape(str(runs_dir))}</h1>"]
    runs = collate.collect_runs(runs_dir)
    tables = out / "tables"
    tables.mkdir(exist_ok=True)
    runs.to_csv(tables / "runs.csv", index=False)
    parts.append('<h2>Performance (Table 6 layout)</h2><p><a href="tables/runs.csv">all runs (CSV)</a></p>')
    parts.append(f"<style>{collate.TABLE6_CSS}</style>")
    for backbone in sorted(set(runs["backbone"])):
        collate.write_backbone(runs, backbone, tables, paper)
        fragment = (tables / f"table6_{backbone}.html").read_text()
        parts.append(fragment[fragment.index("</style>") + len("</style>") :])  # the style once, above
    if any(runs_dir.rglob("*.npz")):
        comparisons = out / "comparisons"
        compare.main([str(runs_dir), str(comparisons)])
        table = pd.read_csv(comparisons / "comparisons.csv")
        parts.append(
            '<h2>Comparisons</h2><p><a href="comparisons/comparisons.csv">every pair (CSV)</a>, '
            '<a href="comparisons/correlations.csv">correlations (CSV)</a>, '
            '<a href="comparisons/models.csv">models (CSV)</a></p>'
        )
        if not table.empty:
            means = table.pivot_table(index=["setting", "metric"], columns="block", values="mean", aggfunc="mean")
            parts.append(summary_table(means, "Mean over pairs per setting, metric and block (-1: whole-image maps)."))
        correlations = pd.read_csv(comparisons / "correlations.csv")
        defined = correlations[correlations.n >= MIN_PAIRS]
        if not defined.empty:
            caption = f"Correlation of each metric with the score difference A − B (groups of ≥ {MIN_PAIRS} pairs"
            caption += f"; the first {SHOWN} rows, all in the CSV)." if len(defined) > SHOWN else ")."
            parts.append(summary_table(defined.head(SHOWN), caption))
        pngs = [p for p in figures.draw_all(comparisons, out / "figures", runs_dir) if p.suffix == ".png"]
        parts.append("<h2>Figures</h2>" + "\n".join(figure_html(p, out) for p in pngs))
    else:
        parts.append("<p>No extraction files under the runs: pass --extract to compare reduction patterns.</p>")
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.extract:
            extract_runs(args.runs_dir, args.limit)
        index = build(args.runs_dir, args.out_dir, args.paper)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    log.info("report: %s", index)


if __name__ == "__main__":
    main()
