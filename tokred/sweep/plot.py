"""The sweep's figure: accuracy against images/s, one curve per method over its keep rates, the Pareto front;
beside it the speed-up over the unreduced model against the keep rate (timed in turns: robust on a busy machine)."""

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tokred.sweep.results import UNREDUCED, Row, pareto_optimal  # noqa: E402

METRICS = {"acc1": "top-1 accuracy (%)", "map": "mAP (%)"}
PNG, PDF = "pareto.png", "pareto.pdf"


def curve_name(row: Row) -> str:
    """The legend entry of a row's curve: its method, "(trained)" for checkpoints."""
    return row.method + (" (trained)" if row.checkpoint else "")


def write_figure(rows: list[Row], folder: Path) -> tuple[Path, Path]:
    """Draw ``rows`` (of one model, dataset, batch and device) to folder/pareto.png and folder/pareto.pdf."""
    curves: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.method != UNREDUCED:
            curves[curve_name(row)].append(row)
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    for name, points in curves.items():
        points.sort(key=lambda row: row.r)
        ax.plot([p.images_per_s for p in points], [p.score for p in points], "o-", ms=4, lw=1.2, label=name)
        right.plot([p.r for p in points], [p.speedup for p in points], "o-", ms=4, lw=1.2)
        for p in points:
            ax.annotate(f"{p.r:g}", (p.images_per_s, p.score), textcoords="offset points", xytext=(3, 3), fontsize=6)
    for row in rows:
        if row.method == UNREDUCED:
            ax.plot(row.images_per_s, row.score, "*", color="black", ms=14, zorder=5, label="unreduced")
    front = sorted(
        (r for r, best in zip(rows, pareto_optimal(rows), strict=True) if best), key=lambda r: r.images_per_s
    )
    ax.plot(
        [r.images_per_s for r in front],
        [r.score for r in front],
        drawstyle="steps-pre",
        ls="--",
        color="grey",
        lw=1,
        zorder=1,
        label="Pareto front",
    )
    ax.plot([r.images_per_s for r in front], [r.score for r in front], "o", mfc="none", mec="black", ms=9, zorder=4)
    first = rows[0]
    ax.set_xlabel(f"images/s at batch {first.batch} on {first.device}")
    ax.set_ylabel(f"{METRICS.get(first.metric, first.metric)} on {first.dataset}, {first.images} images")
    title = f"{first.model}: accuracy against throughput (numbers: keep rate r)"
    if any(row.random_weights for row in rows):
        title += "\nrandom weights: the accuracies are chance level, the speeds are real"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    right.axhline(1.0, color="black", lw=1, ls=":")
    right.set_xlabel("keep rate r")
    right.set_ylabel("speed-up over the unreduced model (×)")
    right.set_title(f"timed in turns with the unreduced model, batch {first.batch}", fontsize=10)
    right.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    paths = folder / PNG, folder / PDF
    fig.savefig(paths[0], dpi=100, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths
