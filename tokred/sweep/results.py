"""The sweep's record: one CSV row per configuration, appended as each finishes, and the settings it belongs to."""

import csv
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tokred.sweep")

CSV = "sweep.csv"
SETTINGS = "settings.json"
UNREDUCED = "none"
"""The method name of the unreduced model's row."""


@dataclass(frozen=True)
class Config:
    """One point of the sweep: a method at keep rate ``r`` on the backbone's weights, or from a ``checkpoint``
    of train/main.py (its own method and r); method "none" is the unreduced model."""

    method: str
    r: float
    checkpoint: str = ""

    @property
    def label(self) -> str:
        """The configuration in words, for logs and the page."""
        if self.method == UNREDUCED:
            return "unreduced"
        return f"{self.method} r={self.r:g}" + (f" ({self.checkpoint})" if self.checkpoint else "")


@dataclass
class Row:
    """The measurements of one configuration: ``score`` is ``metric`` ("acc1": top-1 %, "map": mAP %) on
    ``images`` images; ``images_per_s`` at ``batch``, ``latency_ms`` at batch 1, ``speedup`` the unreduced
    model's time over this one's at ``batch``, measured in turns; ``tokens`` the mean spatial tokens after each
    stage ("98/49/24"); ``random_weights``: the accuracy is that of untrained weights (chance level)."""

    method: str
    r: float
    checkpoint: str
    weights: str
    random_weights: bool
    model: str
    dataset: str
    metric: str
    score: float
    images: int
    images_per_s: float
    batch: int
    latency_ms: float
    speedup: float
    tokens: str
    device: str

    @property
    def config(self) -> Config:
        return Config(self.method, self.r, self.checkpoint)


FIELDS = [f.name for f in dataclasses.fields(Row)]
TYPES = {f.name: f.type for f in dataclasses.fields(Row)}


def parse_value(name: str, text: str) -> Any:
    """A CSV cell back as its Row field's type."""
    kind = TYPES[name]
    if kind in (bool, "bool"):
        return text == "True"
    return {"float": float, "int": int}.get(getattr(kind, "__name__", str(kind)), str)(text)


def read_rows(folder: Path) -> list[Row]:
    """The finished rows of ``folder``'s sweep.csv (none when it is missing). A last line cut short by an
    interrupted write is removed from the file, with a warning."""
    path = folder / CSV
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        kept = text[: text.rfind("\n") + 1]
        log.warning("%s ends in a row cut short (%r): removed, its configuration runs again", path, text[len(kept) :])
        path.write_text(kept)
        text = kept
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is not None and reader.fieldnames != FIELDS:
        raise ValueError(
            f"{path} has the columns {reader.fieldnames}, not those of this version of the sweep ({FIELDS}): "
            "pass another --out or delete the folder"
        )
    return [Row(**{name: parse_value(name, value) for name, value in line.items()}) for line in reader]


def append_row(folder: Path, row: Row) -> None:
    """Append ``row`` to ``folder``'s sweep.csv (with the header first when the file is new), flushed to disk."""
    path = folder / CSV
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(dataclasses.asdict(row))
        f.flush()
        os.fsync(f.fileno())


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` in ``folder`` (created); when it holds rows of a sweep with other settings, refuse:
    they would not be comparable (ValueError naming the differences)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS
    saved = json.loads(path.read_text()) if path.is_file() else settings
    differ = [f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} now" for k in settings if saved.get(k) != settings[k]]
    if differ and read_rows(folder):
        raise ValueError(
            f"{folder} holds a sweep with other settings ({'; '.join(differ)}): rerun with its settings to "
            "continue it, or pass another --out"
        )
    path.write_text(json.dumps(settings, indent=1) + "\n")


def pareto_optimal(rows: list[Row]) -> list[bool]:
    """Per row, whether no other row is at least as fast and as accurate and better in one of the two."""
    return [
        not any(
            o.images_per_s >= r.images_per_s
            and o.score >= r.score
            and (o.images_per_s, o.score) != (r.images_per_s, r.score)
            for o in rows
        )
        for r in rows
    ]
