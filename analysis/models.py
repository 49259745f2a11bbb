"""The extracted models under a folder: what each extraction file holds, read once and kept, damaged files named."""

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from analysis.extraction import Extraction, NotAnExtraction

log = logging.getLogger(__name__)

CAPACITIES = ("tiny", "small", "base", "large", "huge")


@dataclass(frozen=True, order=True)
class Model:
    """One extraction file's model: what it is and on which data."""

    dataset: str
    backbone: str
    method: str  # "deit" for the unreduced baseline
    keep_rate: float
    blocks: tuple[int, ...]
    path: Path

    @property
    def name(self) -> str:
        return self.backbone if self.method == "deit" else f"{self.backbone}/{self.method}/r{self.keep_rate:g}"

    @property
    def capacity(self) -> int | None:
        """Rank of the backbone's size word (tiny < small < base < ...), None when the name has none."""
        words = self.backbone.replace("-", "_").split("_")
        return next((CAPACITIES.index(w) for w in words if w in CAPACITIES), None)


def find_models(root: Path) -> tuple[list[Model], dict[Path, str]]:
    """Every readable extraction file under ``root`` as a model, and the unreadable ones with the reason.

    Each file is read whole (and kept, see :func:`load`), so a damaged one is found here: it is named in a
    warning and skipped. Archives that are not extraction files are ignored (logged), and so are the parts of an
    unfinished extraction (``*.npz.parts/``).

    Raises:
        FileNotFoundError: no readable extraction file under ``root``.
    """
    models, skipped = [], {}
    for path in sorted(Path(root).rglob("*.npz")):
        if not path.is_file() or path.parent.name.endswith(".npz.parts"):
            continue
        try:
            extraction = load(path)
        except NotAnExtraction as error:
            log.info("ignored: %s", error)
            continue
        except ValueError as error:
            log.warning("skipped, unreadable: %s", error)
            skipped[path] = str(error)
            continue
        method, keep_rate = (extraction.method, extraction.keep_rate) if extraction.blocks else ("deit", 1.0)
        models.append(Model(extraction.dataset, extraction.model, method, keep_rate, tuple(extraction.blocks), path))
    for parts in sorted(Path(root).rglob("*.npz.parts")):
        log.warning("%s: an unfinished extraction, not compared (rerun python -m analysis.extract to finish it)", parts)
    if not models:
        found = f" ({len(skipped)} unreadable, see the warnings)" if skipped else ""
        raise FileNotFoundError(f"no extraction files under {root}{found}: write them with python -m analysis.extract")
    return models, skipped


def load(path: Path) -> Extraction:
    """The extraction file at ``path``, read once per version of the file (kept in memory)."""
    return _load(path, path.stat().st_mtime_ns)


@cache
def _load(path: Path, mtime_ns: int) -> Extraction:
    return Extraction.load(path)


def same_images(a: Extraction, b: Extraction) -> str:
    """How the images of two extractions differ: "" when they are the same images of one split."""
    if (a.dataset, a.split) != (b.dataset, b.split):
        return f"{a.dataset}/{a.split} against {b.dataset}/{b.split}"
    if a.num_images != b.num_images:
        return f"{a.num_images} against {b.num_images} images of {a.dataset}/{a.split}"
    if not np.array_equal(a.targets, b.targets):
        return f"other images of {a.dataset}/{a.split} (the labels differ)"
    return ""
