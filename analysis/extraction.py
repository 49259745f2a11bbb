"""The extraction format: what one trained model does on one dataset split, per image, in one ``.npz`` file.

``python -m analysis.extract`` writes it; :meth:`Extraction.load` reads it, and every later analysis step starts
from it. The file is a compressed NumPy archive (``numpy.load(path)`` opens it, no pickles). Row i of every
per-image array is image i of the split, in dataset order (the first N images with ``--limit N``).

Sizes: N images, C classes, D blocks, E embedding width, G the side of the patch grid (14 for 224² images and
16² patches), P = G² patches numbered row-major (p = G·row + col), S reduction stages.

=============================  ======================  =======  ==================================================
key                            shape                   dtype    content
=============================  ======================  =======  ==================================================
``meta``                       ()                      str      JSON object, the fields below
``targets``                    [N] / [N, C]            int64 /  class index; multi-hot rows for multi-label data
                                                       uint8
``logits``                     [N, C]                  float16  the model's output
``cls``                        [N, D, E]               float16  the class token after every block (before the
                                                                final norm)
``stage{s}_assignment``        [N, P]                  int16    per patch, the token that holds it after stage s
                                                                (composed through the earlier stages), -1 dropped
``stage{s}_kept``              [N, M_s]                int16    per token after stage s, the one patch it holds;
                                                                -1 for a token holding several (merged) or none
``stage{s}_representatives``   [N, M_s]                int16    per token, the patch that stands for it: the kept
                                                                patch (pruning), the cluster centre's patch chained
                                                                through the stages (K-Medoids, DPC-KNN); -1 none
``stage{s}_token_counts``      [N]                     int16    real tokens after stage s (ATS varies per image)
=============================  ======================  =======  ==================================================

s = 0 .. S-1 in block order. Token columns (M_s) are padded with -1 to the widest image of the split (ATS keeps
a data-dependent number of tokens; EViT has K_s kept tokens plus the fused one). A DeiT baseline (no reduction)
has no stage arrays. Kept sets for IoU/IoA are the non-negative ``representatives`` (they equal ``kept`` for the
pruning methods and are the centres for K-Medoids and DPC-KNN); merging patterns are the ``assignment`` maps.

``meta`` holds: ``format`` ("tokred-extraction"), ``version`` (1), ``model`` (timm name), ``method``,
``keep_rate``, ``reduction_loc``, ``blocks`` (the block of each stage), ``dataset``, ``split`` ("eval" or
"train"), ``checkpoint`` (the path given), ``weights`` ("ema" or "model"), ``num_classes``, ``multi_label``,
``metric`` ("acc1": top-1 accuracy, or "map": mean average precision of the sigmoid scores, as in training),
``score`` (that metric in %, computed from the float32 logits of these images), ``num_images``, ``grid`` (G),
and ``config`` (the run's training configuration, train.config.TrainConfig as a dict).
"""

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "tokred-extraction"
VERSION = 1
STAGE_ARRAYS = ("assignment", "kept", "representatives", "token_counts")
PADDED = ("kept", "representatives")  # token columns, -1 padded
ARRAYS = ("targets", "logits", "cls", *STAGE_ARRAYS)  # the fields that are not meta


class NotAnExtraction(ValueError):
    """A readable NumPy archive that is not an extraction file (it has no ``meta``)."""


def stage_key(stage: int, name: str) -> str:
    """The archive key of stage array ``name`` (one of STAGE_ARRAYS) of stage ``stage`` (0-based)."""
    return f"stage{stage}_{name}"


@dataclass
class Extraction:
    """One extraction file in memory: the ``meta`` fields, then the arrays (stage arrays as lists over stages).

    Attributes:
        targets: [N] int64 class indices, or [N, C] uint8 multi-hot rows.
        logits: [N, C] float16.
        cls: [N, D, E] float16 class token after every block.
        assignment: per stage [N, P] int16, composed, -1 dropped.
        kept: per stage [N, M_s] int16, -1 padded.
        representatives: per stage [N, M_s] int16, -1 padded.
        token_counts: per stage [N] int16.
    """

    model: str
    method: str
    keep_rate: float
    reduction_loc: list[int]
    blocks: list[int]
    dataset: str
    split: str
    checkpoint: str
    weights: str
    num_classes: int
    multi_label: bool
    metric: str
    score: float
    grid: int
    config: dict[str, Any] = field(repr=False)
    targets: np.ndarray = field(repr=False)
    logits: np.ndarray = field(repr=False)
    cls: np.ndarray = field(repr=False)
    assignment: list[np.ndarray] = field(default_factory=list, repr=False)
    kept: list[np.ndarray] = field(default_factory=list, repr=False)
    representatives: list[np.ndarray] = field(default_factory=list, repr=False)
    token_counts: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.targets)

    @property
    def num_stages(self) -> int:
        return len(self.blocks)

    def meta(self) -> dict[str, Any]:
        """The ``meta`` JSON object."""
        values = {name: getattr(self, name) for name in meta_fields()}
        return {"format": FORMAT, "version": VERSION, **values, "num_images": self.num_images}

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array under its archive key, in the format's dtypes."""
        arrays = {
            "targets": self.targets.astype(np.uint8 if self.multi_label else np.int64, copy=False),
            "logits": self.logits.astype(np.float16, copy=False),
            "cls": self.cls.astype(np.float16, copy=False),
        }
        for name in STAGE_ARRAYS:
            arrays |= {stage_key(s, name): a.astype(np.int16, copy=False) for s, a in enumerate(getattr(self, name))}
        return arrays

    def save(self, path: str | Path) -> None:
        """Write the file atomically (a temporary file renamed over ``path``)."""
        self.check()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(self.meta())), **self.arrays())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Extraction":
        """Read an extraction file (all arrays into memory).

        Raises:
            FileNotFoundError: no file at ``path``.
            NotAnExtraction: a NumPy archive without ``meta``.
            ValueError: a damaged file (truncated, not a zip archive, failed checksum) or an inconsistent one.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"extraction file not found: {path} (write it with python -m analysis.extract)")
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path} is no complete .npz archive (truncated, or another kind of file): extract it again"
            )
        try:
            extraction = cls._read(path)
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}): extract it again") from error
        try:
            extraction.check()
        except ValueError as error:
            raise ValueError(f"{path}: {error}; extract it again") from error
        return extraction

    @classmethod
    def _read(cls, path: Path) -> "Extraction":
        with np.load(path, allow_pickle=False) as archive:
            if "meta" not in archive.files:
                raise NotAnExtraction(
                    f"{path} is not an extraction file (no 'meta'); write it with python -m analysis.extract"
                )
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
                raise ValueError(
                    f"{path} is {meta.get('format')!r} version {meta.get('version')}; this code reads {FORMAT!r} "
                    f"up to version {VERSION}: update tokred or extract again"
                )
            keys = ["targets", "logits", "cls"]
            keys += [stage_key(s, name) for s in range(len(meta.get("blocks", []))) for name in STAGE_ARRAYS]
            missing = [name for name in meta_fields() if name not in meta] + sorted(set(keys) - set(archive.files))
            if missing:
                raise ValueError(f"{path} is incomplete (no {', '.join(missing)}): extract it again")
            arrays = {key: archive[key] for key in keys}
        per_stage = {
            name: [arrays.pop(stage_key(s, name)) for s in range(len(meta["blocks"]))] for name in STAGE_ARRAYS
        }
        return cls(**{name: meta[name] for name in meta_fields()}, **arrays, **per_stage)

    def check(self) -> None:
        """Raise ValueError unless the arrays have the shapes the format promises."""
        n, p = self.num_images, self.grid**2
        problems = [
            f"{len(getattr(self, name))} {name} arrays for {self.num_stages} stages"
            for name in STAGE_ARRAYS
            if len(getattr(self, name)) != self.num_stages
        ]
        if problems:
            raise ValueError("inconsistent extraction: " + "; ".join(problems))
        if self.logits.shape != (n, self.num_classes):
            problems.append(f"logits {self.logits.shape} for {n} images and {self.num_classes} classes")
        if self.cls.ndim != 3 or len(self.cls) != n:
            problems.append(f"cls {self.cls.shape} for {n} images")
        for s in range(self.num_stages):
            if self.assignment[s].shape != (n, p):
                problems.append(f"stage {s} assignment {self.assignment[s].shape}, expected {(n, p)}")
            if self.kept[s].shape != self.representatives[s].shape or len(self.kept[s]) != n:
                shapes = f"{self.kept[s].shape} / {self.representatives[s].shape}"
                problems.append(f"stage {s} kept / representatives {shapes} for {n} images")
            if self.token_counts[s].shape != (n,):
                problems.append(f"stage {s} token_counts {self.token_counts[s].shape}, expected {(n,)}")
        if problems:
            raise ValueError("inconsistent extraction: " + "; ".join(problems))


def meta_fields() -> list[str]:
    """The Extraction fields stored in ``meta``."""
    return [f.name for f in fields(Extraction) if f.name not in ARRAYS]
