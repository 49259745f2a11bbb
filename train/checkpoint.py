"""A run's checkpoint as one typed artefact, its atomic and rotated writes, and the run directory's lock.

Random streams are not saved: they are re-derived from the step (see train.engine.reseed).
"""

import dataclasses
import fcntl
import logging
import math
import os
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from train.config import TrainConfig, flag

log = logging.getLogger("train")

LAST = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"  # the last checkpoint before LAST, kept in case LAST is lost
BEST = "best_checkpoint.pth"
LOCK = "run.lock"
METRICS = "metrics.jsonl"
IDENTITY = ("model", "method", "r", "reduction_loc", "method_options", "dataset")
"""The configuration that makes a run what it is: a checkpoint resumes or evaluates only under the same."""


@dataclass
class Progress:
    """Where training stands: optimizer steps so far, micro-batches done in the current epoch, and the current
    epoch's training-loss sum over its micro-batches read back so far (its mean survives a resume)."""

    epoch: int = 0
    step: int = 0
    micro: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    def next_epoch(self) -> None:
        self.epoch, self.micro, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0


@dataclass
class Best:
    """The run's best evaluation so far: its score, the metric that selects (e.g. "test_acc1"), the weights that
    scored it ("model" or "ema"), and the epoch."""

    score: float = -math.inf
    metric: str | None = None
    source: str | None = None
    epoch: int | None = None


@dataclass
class Checkpoint:
    """What a checkpoint of train/main.py holds: the state dicts of the model, its EMA (timm's ModelEmaV3: keys
    under ``module.``), optimizer, LR scheduler (informational: a resume rebuilds the schedule from the command
    line) and gradient scaler; the progress, the best evaluation, the configuration (TrainConfig as JSON).
    ``path``: where it was read from, for messages."""

    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    progress: Progress = field(default_factory=Progress)
    best: Best = field(default_factory=Best)
    config: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)

    def save(self, path: Path, keep_previous: bool = False) -> None:
        """Write to a temporary file, flush it to disk, then rename: a kill leaves the old file or the new one.
        ``keep_previous``: the file being replaced becomes PREVIOUS (checkpoint.prev.pth next to it) first."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        state |= {"progress": dataclasses.asdict(self.progress), "best": dataclasses.asdict(self.best)}
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        """The checkpoint at ``path`` on the CPU; FileNotFoundError or ValueError naming the file and its fault."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load fails in many ways on a damaged file: name the file, keep the cause
            if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
                raise ValueError(
                    f"{path} holds Python objects besides tensors and plain values, which are not loaded (torch.load "
                    "with weights_only): it is not a checkpoint of train/main.py"
                ) from error
            raise ValueError(
                f"{path} ({path.stat().st_size} bytes) is not a readable checkpoint ({type(error).__name__}): it is "
                f"cut short, damaged or another kind of file; pass another checkpoint (a run keeps the one before "
                f"its {LAST} as {PREVIOUS})"
            ) from error
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            held = f"keys {', '.join(map(str, list(state)[:5]))}, ..." if isinstance(state, dict) else type(state)
            raise ValueError(
                f"{path} is not a checkpoint of train/main.py: it holds no 'model' state dict ({held}); "
                "a file of bare weights goes to --pretrained-path"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"path", "progress", "best"}
        return cls(
            **{k: v for k, v in state.items() if k in known},
            progress=Progress(**(state.get("progress") or {})),
            best=Best(**(state.get("best") or {})),
            path=path,
        )

    def weights(self, which: str = "best") -> tuple[dict[str, Tensor], str]:
        """(the model's state dict, "model" or "ema"); ``which``: "model", "ema" (timm's ``module.`` prefix
        removed), or "best": the weights the run's selection chose (the EMA's when they scored best)."""
        if which == "best":
            which = "ema" if self.best.source == "ema" else "model"
        if which == "model":
            return self.model, which
        if which != "ema":
            raise ValueError(f"weights {which!r}: choose 'best', 'model' or 'ema'")
        if self.ema is None:
            raise ValueError(f"{self.path} has no 'ema' weights: choose --weights model (its run had no --ema-decay)")
        return {k.removeprefix("module."): v for k, v in self.ema.items()}, which

    def train_config(self) -> TrainConfig:
        """The saved configuration as a TrainConfig (fields this version lacks are left out)."""
        if not self.config:
            raise ValueError(
                f"{self.path} holds no training configuration (key 'config'): pass a checkpoint written by "
                "train/main.py"
            )
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in self.config.items() if k in known})
        config.reduction_loc = tuple(config.reduction_loc)
        return config

    def differences(self, config: TrainConfig, names: tuple[str, ...] = IDENTITY) -> list[str]:
        """The fields among ``names`` where ``config`` differs from the checkpoint's configuration, each as
        "--flag saved value (the command line: its value)"."""
        saved = self.train_config()
        return [
            f"{flag(name)} {describe(getattr(saved, name))} (the command line: {describe(getattr(config, name))})"
            for name in names
            if normal(getattr(saved, name)) != normal(getattr(config, name))
        ]

    def check_resumable(self, config: TrainConfig) -> None:
        """ValueError naming what is missing or what differs when this checkpoint cannot continue ``config``."""
        if self.optimizer is None or self.config is None:
            raise ValueError(
                f"{self.path} holds weights but no training state (optimizer, progress, configuration): to start "
                f"a run from its weights pass --pretrained-path {self.path} instead of --resume"
            )
        differ = self.differences(config)
        if differ:
            raise ValueError(
                f"{self.path} is a checkpoint of another run: its {'; '.join(differ)}. Resume with the "
                "checkpoint's options, or start a new run under another --run-name (without --resume)"
            )


def normal(value: Any) -> Any:
    """Tuples and lists compare alike (JSON keeps tuples as lists)."""
    return list(value) if isinstance(value, tuple | list) else value


def describe(value: Any) -> str:
    """A configuration value as it is written on the command line."""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    if isinstance(value, tuple | list):
        return " ".join(map(str, value)) or "(none)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def training_state(run_dir: Path) -> list[str]:
    """The files of ``run_dir`` that a fresh start would overwrite or extend (checkpoints, metrics)."""
    return [name for name in (LAST, PREVIOUS, BEST, METRICS) if (run_dir / name).exists()]


def resume_from(resume: str | None, run_dir: Path) -> Checkpoint | None:
    """The checkpoint a training run continues from, or None to start at step 0.

    ``resume``: a path (loaded, errors name it); "auto": the run's last checkpoint, else the one before it (with a
    warning naming both), else None for a new run directory. A run directory that holds training state but no
    loadable checkpoint, or any training state when ``resume`` is None, is refused (ValueError): a start at step
    0 would overwrite its best checkpoint and extend its metrics.
    """
    if resume is not None and resume != "auto":
        return Checkpoint.load(resume)
    found = training_state(run_dir)
    if resume is None:
        if found:
            raise ValueError(
                f"{run_dir} already holds a run ({', '.join(found)}): pass --resume auto to continue it, or "
                "another --run-name (or delete the folder) to start a new one"
            )
        return None
    faults = []
    for name in (LAST, PREVIOUS):
        try:
            checkpoint = Checkpoint.load(run_dir / name)
        except (FileNotFoundError, ValueError) as error:
            faults.append(str(error))
            continue
        if faults:
            log.warning("%s; resuming from %s instead (step %d)", faults[0], checkpoint.path, checkpoint.progress.step)
        return checkpoint
    if found:
        raise ValueError(
            f"{run_dir} holds a run ({', '.join(found)}) but no checkpoint to resume from ({'; '.join(faults)}). "
            "Starting over would overwrite it: delete the folder to start again, or pick another --run-name"
        )
    return None


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock file while training: a second run on the same directory is refused (RuntimeError
    naming the holder). The lock is the kernel's (flock): it goes with its process, however that process ends,
    so the file a killed run leaves behind locks nothing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RuntimeError(
                f"{run_dir} is in use by {holder} (lock file {path}): wait for that run to end, or pick another "
                "--run-name"
            ) from None
        f.truncate(0)
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
