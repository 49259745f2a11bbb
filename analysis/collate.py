"""The study's Table 6 from a directory of runs: each run's best test score, the paper's layout with the best and
worst three marked, beside the paper's numbers (supplementary Table 6, shipped as ``data/paper_table6.csv``).

    python -m analysis.collate RUNS_DIR OUT_DIR [--paper]

A run is a folder holding ``config.json`` and ``metrics.jsonl`` as ``train/main.py`` writes them; a run with an
empty ``reduction_loc`` is the unreduced DeiT baseline (method ``deit``, keep rate 1.0, as in the paper's CSV).
"""

import argparse
import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import tokred
from analysis.runs import BASELINE, KEY, collect_runs

log = logging.getLogger("analysis.collate")

PAPER_CSV = Path(__file__).parent / "data" / "paper_table6.csv"
DATASETS = {"imagenet": "ImageNet", "nabirds": "NABirds", "coco": "COCO", "nuswide": "NUS-WIDE"}
KEEP_RATES = (0.25, 0.5, 0.7, 0.9)
METHODS = {key: reducer.info.name for key, reducer in tokred.METHODS.items()}
"""The paper's rows: method key → display name, in its order."""
BACKBONES = {"deit_tiny_patch16_224": "DeiT-T", "deit_small_patch16_224": "DeiT-S", "deit_base_patch16_224": "DeiT-B"}
SOURCES = ("ours", "paper", "difference")
LEGEND = "bold: above the DeiT baseline; ▲1 ▲2 ▲3: best three; ▼1 ▼2 ▼3: worst three (▼1 the lowest)"
TABLE6_CSS = """\
table.table6 { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.table6 th, table.table6 td { padding: 2px 6px; text-align: right; border-bottom: 1px solid #ddd; }
table.table6 th[scope=row] { text-align: left; }
table.table6 .above-baseline { font-weight: bold; }
table.table6 .best1 { background: #e8534a; }
table.table6 .best2 { background: #f5a142; }
table.table6 .best3 { background: #f7e35c; }
table.table6 .worst3 { background: #bcdcf5; }
table.table6 .worst2 { background: #5b9bd5; }
table.table6 .worst1 { background: #1f4e8c; color: #fff; }
table.table6 .paper { display: block; font-size: 75%; font-weight: normal; opacity: 0.75; }
"""


def paper_results() -> pd.DataFrame:
    """The paper's Table 6 (DeiT-B and DeiT-T) in long form: backbone, dataset, method, keep_rate, metric, value
    (NaN where the paper has "–")."""
    return pd.read_csv(PAPER_CSV)


def _display(backbone: str) -> str:
    return BACKBONES.get(backbone, backbone)


def _keys(table: pd.DataFrame) -> list[str]:
    """The method key of each row of a :func:`table6` layout."""
    names = {name: key for key, name in METHODS.items()}
    return [BASELINE, *(names.get(label, label) for label in table.index[1:])]


def table6(runs: pd.DataFrame, backbone: str) -> pd.DataFrame:
    """One backbone's results in the paper's layout.

    Args:
        runs: rows with backbone, dataset, method, keep_rate, value, at most one per (backbone, dataset, method,
            keep_rate): :func:`collect_runs` or :func:`paper_results`.
        backbone: e.g. ``deit_base_patch16_224``.

    Returns:
        [1 + methods, datasets × keep rates]: the first row is the DeiT baseline (labelled with the backbone's
        name, e.g. DeiT-B; its value repeated over the keep rates of its dataset), then the 13 methods in the
        paper's order and display names, then any other method found. Columns (dataset, r): the datasets with
        results (the paper's four in its order, then any other) × r ∈ {0.25, 0.5, 0.7, 0.9} and any other keep
        rate found. NaN where no run.
    """
    rows = runs[runs["backbone"] == backbone]
    if rows.empty:
        raise ValueError(f"no results of {backbone}; there are results of {', '.join(sorted(set(runs['backbone'])))}")
    reduced, baseline = rows[rows["method"] != BASELINE], rows[rows["method"] == BASELINE]
    found = set(rows["dataset"])
    datasets = [*(dataset for dataset in DATASETS if dataset in found), *sorted(found - set(DATASETS))]
    rates = sorted(set(KEEP_RATES) | set(reduced["keep_rate"]))
    methods = [*METHODS, *sorted(set(reduced["method"]) - set(METHODS))]
    columns = pd.MultiIndex.from_product([datasets, rates], names=["dataset", "r"])
    table = reduced.pivot(index="method", columns=["dataset", "keep_rate"], values="value")
    table = table.reindex(index=methods, columns=columns).rename(index=METHODS)
    base = baseline.set_index("dataset")["value"]
    first = pd.DataFrame([[base.get(dataset, math.nan) for dataset, _ in columns]], [_display(backbone)], columns)
    return pd.concat([first, table]).rename_axis("method").astype(float)


@dataclass(frozen=True)
class Marks:
    """Per cell of a :func:`table6` layout (same index and columns).

    Attributes:
        rank: "best1", "best2", "best3", "worst1" (the lowest), "worst2", "worst3", or "" (strings).
        above_baseline: the value exceeds the DeiT baseline of its dataset (bools; False for the baseline row).
    """

    rank: pd.DataFrame
    above_baseline: pd.DataFrame


def rank_marks(table: pd.DataFrame, decimals: int = 2) -> Marks:
    """The paper's marks: per column, the best and worst three methods, and the scores above the baseline.

    Values are compared as displayed (rounded to ``decimals``); empty cells take no part. Ties share the better
    rank (competition ranking: 82.0, 82.0, 81.5 → best1, best1, best3), so a tie can mark more than three
    cells. A column with n < 6 values marks the best min(3, ⌈n/2⌉) ranks and the worst min(3, ⌊n/2⌋), so no cell
    is both (one value: best1 only); a tie straddling the two groups counts as best. The first row of ``table``
    is the baseline and is never ranked.
    """
    methods = table.iloc[1:].round(decimals)
    rank = pd.DataFrame("", index=table.index, columns=table.columns)
    for column in table.columns:
        values = methods[column].dropna()
        n_best, n_worst = min(3, math.ceil(len(values) / 2)), min(3, len(values) // 2)
        best = values.rank(method="min", ascending=False)
        worst = values.rank(method="min", ascending=True)
        for label in values.index:
            if best[label] <= n_best:
                rank.loc[label, column] = f"best{best[label]:.0f}"
            elif worst[label] <= n_worst:
                rank.loc[label, column] = f"worst{worst[label]:.0f}"
    above = methods.gt(table.iloc[0].round(decimals), axis=1)
    above = pd.concat([pd.DataFrame(False, index=table.index[:1], columns=table.columns), above])
    return Marks(rank, above)


def beside_paper(ours: pd.DataFrame, backbone: str) -> pd.DataFrame:
    """Ours beside the paper's numbers in the :func:`table6` layout.

    Args:
        ours: :func:`collect_runs` output.

    Returns:
        The rows of ``table6(ours, backbone)``; columns (dataset, r, source) with source "ours", "paper" and
        "difference" (ours − paper to 1e-6, free of float noise; NaN where either is missing).

    Raises:
        ValueError: the paper's Table 6 has no numbers for ``backbone`` (it has DeiT-B and DeiT-T only).
    """
    paper = paper_results()
    if backbone not in set(paper["backbone"]):
        have = ", ".join(_display(b) for b in sorted(set(paper["backbone"])))
        raise ValueError(
            f"the paper's Table 6 has no {backbone} numbers (it has {have}; the DeiT-S results are in the main "
            "paper, not in data/paper_table6.csv)"
        )
    mine = table6(ours, backbone)
    theirs = table6(paper, backbone).reindex(index=mine.index, columns=mine.columns)
    both = pd.concat(
        dict(zip(SOURCES, (mine, theirs, (mine - theirs).round(6)), strict=True)), axis=1, names=["source"]
    )
    both = both.reorder_levels(["dataset", "r", "source"], axis=1)
    return both[[(dataset, r, source) for dataset, r in mine.columns for source in SOURCES]]


def paper_reference(runs: pd.DataFrame, backbone: str) -> pd.DataFrame | None:
    """The paper's numbers for the methods and keep rates of ``runs`` on the paper's datasets, for runs on data the
    paper has no results of (e.g. the demo data), so that they still stand beside the paper.

    Returns:
        [1 + methods, paper datasets × keep rates] in the :func:`table6` layout (the baseline first), or None
        when the paper has no ``backbone`` numbers or has results on one of the runs' datasets (then
        :func:`beside_paper` puts them side by side).
    """
    paper = paper_results()
    ours = runs[runs["backbone"] == backbone]
    if backbone not in set(paper["backbone"]) or set(ours["dataset"]) & set(paper["dataset"]):
        return None
    theirs = table6(paper, backbone)
    methods = [METHODS.get(method, method) for method in dict.fromkeys(ours["method"]) if method != BASELINE]
    rates = sorted(set(ours.loc[ours["method"] != BASELINE, "keep_rate"]) & set(theirs.columns.get_level_values("r")))
    rows = [theirs.index[0], *(name for name in theirs.index[1:] if name in methods)]
    columns = [column for column in theirs.columns if column[1] in rates] if rates else list(theirs.columns)
    return theirs.loc[rows, columns]


def table6_long(runs: pd.DataFrame, backbone: str, paper: bool = False) -> pd.DataFrame:
    """The runs of one backbone in tidy form with their marks (columns ``COLUMNS`` + mark, above_baseline; with
    ``paper``, also the paper's value and ours − paper, NaN where the paper has none)."""
    table = table6(runs, backbone)
    marks = rank_marks(table)
    cells = pd.DataFrame(
        [
            (key, dataset, r, marks.rank.iat[i, j], marks.above_baseline.iat[i, j])
            for i, key in enumerate(_keys(table))
            for j, (dataset, r) in enumerate(table.columns)
        ],
        columns=["method", "dataset", "keep_rate", "mark", "above_baseline"],
    )
    rows = runs[runs["backbone"] == backbone].merge(cells, on=["method", "dataset", "keep_rate"], how="left")
    rows = rows.fillna({"mark": "", "above_baseline": False}).astype({"above_baseline": bool})
    if paper:
        theirs = paper_results().drop(columns="metric").rename(columns={"value": "paper"})
        rows = rows.merge(theirs, on=KEY, how="left")
        rows["difference"] = (rows["value"] - rows["paper"]).round(6)
    return rows


def _text(value: float, decimals: int, signed: bool = False) -> str:
    return "–" if math.isnan(value) else f"{value:{'+' if signed else ''}.{decimals}f}"


def _heading(dataset: str, r: float) -> tuple[str, str]:
    return DATASETS.get(dataset, dataset), f"{r * 100:g}"


def table6_markdown(table: pd.DataFrame, marks: Marks | None = None, decimals: int = 2, signed: bool = False) -> str:
    """A Markdown table for the terminal: with ``marks``, above-baseline cells in bold and ▲1–3 / ▼1–3 after
    the best / worst (see ``LEGEND``); ``signed`` writes differences as +x / -x."""
    symbols = {f"{kind}{k}": f" {arrow}{k}" for kind, arrow in (("best", "▲"), ("worst", "▼")) for k in (1, 2, 3)}

    def text(i: int, j: int) -> str:
        value = _text(table.iat[i, j], decimals, signed)
        if marks is None:
            return value
        return (f"**{value}**" if marks.above_baseline.iat[i, j] else value) + symbols.get(marks.rank.iat[i, j], "")

    grid = [["method", *(" ".join(_heading(d, r)) for d, r in table.columns)]]
    grid += [[str(label), *(text(i, j) for j in range(table.shape[1]))] for i, label in enumerate(table.index)]
    widths = [max(map(len, column)) for column in zip(*grid, strict=True)]
    rows = [[row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))] for row in grid]
    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], rule, *rows[1:]])


def table6_html(
    table: pd.DataFrame,
    marks: Marks | None,
    *,
    paper: pd.DataFrame | None = None,
    caption: str = "",
    decimals: int = 2,
) -> str:
    """A ``<table class="table6">`` in the paper's layout (style it with ``TABLE6_CSS``).

    Each value cell carries the CSS classes of its marks: best1, best2, best3 (red, orange, yellow), worst3,
    worst2, worst1 (light blue, blue, dark blue; worst1 the lowest) and above-baseline (bold).

    Args:
        table, marks: :func:`table6` and :func:`rank_marks` output; ``marks`` None: no marks and no legend.
        paper: the paper's values in the same layout (e.g. the "paper" source of :func:`beside_paper`); each cell
            then also shows the paper's value and ours − paper.
        caption: text put before the legend in the table's caption.
    """

    def cell(i: int, j: int, span: int = 1) -> str:
        rank = "" if marks is None else marks.rank.iat[i, j]
        above = marks is not None and marks.above_baseline.iat[i, j]
        classes = " ".join(filter(None, (rank, "above-baseline" if above else "")))
        attributes = f' colspan="{span}"' * (span > 1) + f' class="{classes}"' * bool(classes)
        attributes += f' title="{rank}"' * bool(rank)
        text = _text(table.iat[i, j], decimals)
        if paper is not None and not math.isnan(paper.iat[i, j]):
            difference = table.iat[i, j] - paper.iat[i, j]
            note = "" if math.isnan(difference) else f" ({_text(difference, decimals, signed=True)})"
            text += f'<span class="paper">paper {_text(paper.iat[i, j], decimals)}{note}</span>'
        return f"<td{attributes}>{text}</td>"

    names = list(table.columns.get_level_values("dataset"))
    groups = [(names.index(dataset), names.count(dataset), dataset) for dataset in dict.fromkeys(names)]
    heads = "".join(f'<th colspan="{n}" scope="colgroup">{html.escape(_heading(d, 0)[0])}</th>' for _, n, d in groups)
    base = "".join(cell(0, start, n) for start, n, _ in groups)
    rates = "".join(f'<th scope="col">{_heading(d, r)[1]}</th>' for d, r in table.columns)
    rows = "".join(
        f'<tr><th scope="row">{html.escape(str(table.index[i]))}</th>'
        + "".join(cell(i, j) for j in range(table.shape[1]))
        + "</tr>\n"
        for i in range(1, len(table))
    )
    places = ((1, "1st"), (2, "2nd"), (3, "3rd"))
    legend = "bold: above the DeiT baseline; " + "; ".join(
        f"{kind}: " + " ".join(f'<span class="{kind}{k}">{place}</span>' for k, place in places)
        for kind in ("best", "worst")
    )
    legend = "" if marks is None else f" {legend}"
    return (
        f'<table class="table6">\n<caption>{html.escape(caption)}{legend}</caption>\n<thead>\n'
        f"<tr><th></th>{heads}</tr>\n"
        f'<tr class="baseline"><th scope="row">{html.escape(str(table.index[0]))}</th>{base}</tr>\n'
        f'<tr><th scope="row">r (%)</th>{rates}</tr>\n</thead>\n<tbody>\n{rows}</tbody>\n</table>\n'
    )


def write_backbone(runs: pd.DataFrame, backbone: str, out_dir: Path, paper: bool) -> str:
    """Writes table6_<backbone>.csv (wide), table6_<backbone>_long.csv (tidy), table6_<backbone>.html (a
    fragment: <style> and <table>) and, with ``paper``, table6_<backbone>_vs_paper.csv (and, for runs on data the
    paper has no results of, table6_<backbone>_paper.csv: :func:`paper_reference`); returns the Markdown rendering
    (with the differences from the paper when it has this backbone)."""
    table = table6(runs, backbone)
    marks = rank_marks(table)
    comparison = reference = None
    if paper:
        try:
            comparison = beside_paper(runs, backbone)
        except ValueError as error:
            log.warning("%s: writing ours alone", error)
        reference = paper_reference(runs, backbone)
    stem = out_dir / f"table6_{backbone}"
    table.to_csv(f"{stem}.csv")
    table6_long(runs, backbone, paper=comparison is not None).to_csv(f"{stem}_long.csv", index=False)
    metrics = " / ".join(sorted(set(runs.loc[runs["backbone"] == backbone, "metric"])))
    caption = f"{_display(backbone)}: {metrics} on the test split, best of the model and its EMA over epochs."
    theirs = None if comparison is None else comparison.xs("paper", axis=1, level="source")
    fragment = table6_html(table, marks, paper=theirs, caption=caption)
    text = f"## Table 6, {_display(backbone)} ({backbone})\n\n{table6_markdown(table, marks)}\n\n{LEGEND}\n"
    if reference is not None:
        datasets = ", ".join(DATASETS.get(d, d) for d in sorted(set(runs.loc[runs["backbone"] == backbone, "dataset"])))
        note = f"The paper has no results on {datasets}; its {_display(backbone)} numbers for these methods"
        note += " and keep rates, on its datasets:"
        reference.to_csv(f"{stem}_paper.csv")
        fragment += table6_html(reference, None, caption=note)
        text += f"\n{note}\n\n{table6_markdown(reference)}\n"
    Path(f"{stem}.html").write_text(f"<style>\n{TABLE6_CSS}</style>\n{fragment}")
    if comparison is not None:
        comparison.to_csv(f"{stem}_vs_paper.csv")
        difference = comparison.xs("difference", axis=1, level="source")
        if difference.notna().any(axis=None):
            text += f"\nOurs − paper:\n\n{table6_markdown(difference, signed=True)}\n"
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.collate",
        description="The study's Table 6 from a directory of runs: per backbone, the best test score of each run "
        "(top-1 or mAP, best of model and EMA over epochs) in the paper's layout, the best and worst three per "
        "column marked, scores above the DeiT baseline in bold. Writes runs.csv and, per backbone, "
        "table6_<backbone>.csv (wide), table6_<backbone>_long.csv (tidy), table6_<backbone>.html (fragment) "
        "[and table6_<backbone>_vs_paper.csv], and prints the tables.",
    )
    parser.add_argument("runs_dir", type=Path, help="folder searched recursively for runs of train/main.py")
    parser.add_argument("out_dir", type=Path, help="folder for the tables (created if needed)")
    parser.add_argument(
        "--paper",
        action="store_true",
        help="put the paper's numbers (supplementary Table 6: DeiT-B and DeiT-T) beside ours, with ours − paper",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        runs = collect_runs(args.runs_dir)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out_dir / "runs.csv", index=False)
    for backbone in sorted(set(runs["backbone"])):
        print(write_backbone(runs, backbone, args.out_dir, args.paper))
    log.info("%d runs, tables in %s", len(runs), args.out_dir)


if __name__ == "__main__":
    main()
