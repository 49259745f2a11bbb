"""The sweep's page: the figure (embedded, so the page stands alone), the settings and the table."""

import base64
import html
from pathlib import Path

import torch

from tokred.sweep.plot import METRICS, PDF, PNG
from tokred.sweep.results import CSV, UNREDUCED, Row, pareto_optimal

PAGE = "index.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-weight: 600; font-size: 1.5em; } img { max-width: 100%; border: 1px solid #eee; }
.banner { background: #fff3cd; border: 2px solid #e0a800; padding: 0.8em 1em; margin: 1em 0; font-weight: 600; }
table { border-collapse: collapse; font-size: 85%; margin: 1em 0; }
td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
td.text, th.text { text-align: left; } tr.pareto { background: #e6f4ea; font-weight: 600; }
.note { color: #555; font-size: 90%; }
"""
COLUMNS = ("method", "r", "weights", "score", "images/s", "speed-up", "latency ms (batch 1)", "tokens per stage")


def describe(value: object) -> str:
    """A setting as the command line writes it ("–" for none)."""
    if value is None:
        return "–"
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def cells(row: Row, best: bool) -> str:
    """One table row's cells."""
    values = (
        ("unreduced" if row.method == UNREDUCED else row.method) + (" ★" if best else ""),
        f"{row.r:g}",
        row.weights,
        f"{row.score:.2f}",
        f"{row.images_per_s:.1f}",
        f"{row.speedup:.2f}×",
        f"{row.latency_ms:.1f}",
        row.tokens,
    )
    return "".join(
        f'<td class="text">{html.escape(v)}</td>' if i in (0, 2) else f"<td>{html.escape(v)}</td>"
        for i, v in enumerate(values)
    )


def write_page(rows: list[Row], folder: Path, settings: dict[str, object]) -> Path:
    """folder/index.html for ``rows`` (the figure already drawn in ``folder``); the table sorted by images/s."""
    first = rows[0]
    optimal = dict(zip(map(id, rows), pareto_optimal(rows), strict=True))
    ordered = sorted(rows, key=lambda r: r.images_per_s, reverse=True)
    header = "".join(f'<th class="text">{c}</th>' if c in ("method", "weights") else f"<th>{c}</th>" for c in COLUMNS)
    header = header.replace("score", html.escape(METRICS.get(first.metric, first.metric)))
    body = "\n".join(
        f'<tr class="{"pareto" if optimal[id(r)] else ""}">{cells(r, optimal[id(r)])}</tr>' for r in ordered
    )
    shown = {
        **settings,
        "backbone weights": next(r.weights for r in rows if r.method == UNREDUCED),
        "device": first.device,
        "images": first.images,
        "torch": torch.__version__,
    }
    listing = "".join(
        f'<tr><th class="text">{html.escape(k)}</th><td class="text">{html.escape(describe(v))}</td></tr>'
        for k, v in shown.items()
    )
    banner = ""
    if random := sum(r.random_weights for r in rows):
        which = "these models are" if random == len(rows) else f"{random} of the {len(rows)} models (see weights) are"
        banner = (
            f'<div class="banner">Random weights: {which} untrained (or their classifier is), so their accuracy is '
            "chance level and says nothing about the methods. The speeds are real. Pass --pretrained-path or "
            "--checkpoints for meaningful accuracies.</div>"
        )
    image = base64.b64encode((folder / PNG).read_bytes()).decode()
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep: {html.escape(first.model)}</title>
<style>{STYLE}</style></head><body>
<h1>Which method for my budget: {html.escape(first.model)} on {html.escape(first.dataset)}</h1>
{banner}
<figure><img src="data:image/png;base64,{image}" alt="accuracy against images/s">
<figcaption class="note">Figure: <a href="{PNG}">{PNG}</a>, <a href="{PDF}">{PDF}</a>; data:
<a href="{CSV}">{CSV}</a>.</figcaption></figure>
<h2>Configurations, fastest first</h2>
<p class="note">★ Pareto-optimal: no other configuration is at least as fast and as accurate and better in one.
Images/s at batch {first.batch}; speed-up: the unreduced model's time over this one's, timed in turns.</p>
<table><tr>{header}</tr>
{body}
</table>
<h2>Settings</h2>
<table>{listing}</table>
</body></html>
"""
    path = folder / PAGE
    path.write_text(page)
    return path
