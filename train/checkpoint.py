"""Atomic checkpoints with everything a resume needs (random streams are re-derived from the step, see engine)."""

import os
from pathlib import Path
from typing import Any

import torch

LAST = "checkpoint.pth"
BEST = "best_checkpoint.pth"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file, flush it to disk, then rename: a kill leaves the old file or the new one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: a path, the run's last checkpoint for 'auto' (None if there is none)."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / LAST
        return last if last.is_file() else None
    return Path(resume)
