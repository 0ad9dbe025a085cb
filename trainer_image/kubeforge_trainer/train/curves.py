"""Loss curves of a run, written by rank 0 under <checkpoint.uri>/logs: train.csv, eval.csv and TensorBoard events.

On a local checkpoint URI the files are appended as training goes; on an object store they are kept in a local
directory and uploaded with every checkpoint and at the end. A resumed run first drops the rows of steps after the
checkpoint it resumes from (they are about to be trained again), so each step appears once.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

from .. import storage

log = logging.getLogger(__name__)

LOG_DIR = "logs"
TRAIN_COLUMNS = ("step", "epoch", "loss", "learning_rate", "tokens_per_second", "mfu", "elapsed_seconds")


def rows_up_to(csv_text: str, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows with step <= step) of a curve CSV."""
    reader = csv.DictReader(io.StringIO(csv_text))
    rows = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) <= step]
    return list(reader.fieldnames or []), rows


class CurveWriter:
    """Appends train and eval rows to CSV files and TensorBoard scalars."""

    def __init__(self, checkpoint_root: str, eval_metrics: list[str], resume_step: int) -> None:
        self.uri = storage.join(checkpoint_root, LOG_DIR)
        self.remote = storage.is_remote(checkpoint_root)
        self._tmp = tempfile.TemporaryDirectory(prefix="kubeforge-logs-") if self.remote else None
        self.dir = Path(self._tmp.name) if self._tmp else Path(storage.local_path(self.uri))
        if self.remote and storage.exists(self.uri):
            storage.download_dir(self.uri, self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.columns = {"train": list(TRAIN_COLUMNS), "eval": ["step", "split", *eval_metrics]}
        for name, columns in self.columns.items():
            self._start_csv(self.dir / f"{name}.csv", columns, resume_step)
        self._tb = self._tensorboard()

    @staticmethod
    def _start_csv(path: Path, columns: list[str], resume_step: int) -> None:
        header, rows = rows_up_to(path.read_text(), resume_step) if path.is_file() else ([], [])
        if header != columns:
            rows = []  # a changed set of columns (other metrics) starts the file afresh
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def _tensorboard(self) -> Any:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.info("tensorboardX is not installed: loss curves go to CSV only")
            return None
        return SummaryWriter(logdir=str(self.dir / "tensorboard"))

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with (self.dir / f"{name}.csv").open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns[name], extrasaction="ignore").writerow(row)

    def train(self, step: int, **values: float | None) -> None:
        """One training row (step, epoch, loss, learning_rate, tokens_per_second, mfu, elapsed_seconds)."""
        self._append("train", {"step": step, **{k: ("" if v is None else v) for k, v in values.items()}})
        if self._tb:
            for key in ("loss", "learning_rate", "tokens_per_second", "mfu"):
                if values.get(key) is not None:
                    self._tb.add_scalar(f"train/{key}", values[key], step)

    def evaluation(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """One evaluation row of a split (validation or test)."""
        self._append("eval", {"step": step, "split": split, **metrics})
        if self._tb:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", value, step)

    def sync(self) -> None:
        """Make the files durable where the checkpoints are (uploads on object stores)."""
        if self._tb:
            self._tb.flush()
        if self.remote:
            storage.upload_dir(self.dir, self.uri)

    def close(self) -> None:
        """Sync and release."""
        self.sync()
        if self._tb:
            self._tb.close()
        if self._tmp:
            self._tmp.cleanup()
