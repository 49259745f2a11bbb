"""What a run records in its directory: metrics per epoch (metrics.jsonl and metrics.csv), optional TensorBoard."""

import csv
import json
import logging
from pathlib import Path

log = logging.getLogger("train")


class RunLog:
    """Records of rank 0 (other ranks record nothing). Resuming appends to the same files (see :meth:`resume`)."""

    def __init__(self, run_dir: Path, rank: int, tensorboard: bool) -> None:
        self.run_dir, self.active = run_dir, rank == 0
        self.writer = None
        if tensorboard and self.active:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def resume(self, epochs_done: int) -> None:
        """Drop the metrics of epochs from ``epochs_done`` on: a run killed after an epoch's metrics were written
        but before its checkpoint was repeats that epoch from the checkpoint."""
        if not self.active:
            return
        rows = self._rows()
        kept = [row for row in rows if row["epoch"] < epochs_done]
        if len(kept) < len(rows):
            log.warning(
                "dropped the metrics of epoch(s) %s from %s: the checkpoint resumed from had not finished them",
                ", ".join(str(row["epoch"]) for row in rows if row["epoch"] >= epochs_done),
                self.run_dir / "metrics.jsonl",
            )
            self._write(kept)

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """Training scalars (loss, lr) at an optimizer step."""
        if not self.active:
            return
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def start(self, metrics: dict[str, float]) -> None:
        """The evaluation before training (step 0): logged and in TensorBoard, not in metrics.jsonl."""
        log.info("before training: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"epoch/{name}", value, 0)

    def epoch(self, metrics: dict[str, float]) -> None:
        """One epoch's metrics: a line of metrics.jsonl, metrics.csv rewritten from it, TensorBoard scalars."""
        log.info("epoch %d: %s", metrics["epoch"], json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        if not self.active:
            return
        self._write([*self._rows(), metrics])
        if self.writer is not None:
            for name, value in metrics.items():
                if name not in ("epoch", "step"):
                    self.writer.add_scalar(f"epoch/{name}", value, metrics["step"])
            self.writer.flush()

    def _rows(self) -> list[dict[str, float]]:
        """The lines of metrics.jsonl so far (none before the first epoch)."""
        lines = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in lines.read_text().splitlines() if line.strip()] if lines.is_file() else []

    def _write(self, rows: list[dict[str, float]]) -> None:
        """metrics.jsonl (written whole, then renamed into place) and metrics.csv from it."""
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(self.run_dir / "metrics.jsonl")
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
