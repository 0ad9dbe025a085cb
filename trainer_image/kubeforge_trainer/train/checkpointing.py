"""Checkpoint layout under spec.checkpoint.uri, retention, and finding the checkpoint to resume from.

Layout (local path or object store)::

    <checkpoint.uri>/
      step-00000100/           one checkpoint; complete once _COMPLETE exists
        config.json            \\
        model.safetensors       |  a kubeforge model directory (models/export.py): consolidated fp32 weights
        tokenizer.json          |  gathered from the ZeRO shards, LoRA merged in
        kubeforge.json         /   version id, package version, metrics
        training_config.json   the spec, the resolved DeepSpeed config and the step plan
        trainer_state.json     step, data position, best and early-stopping state, run id
        deepspeed/             DeepSpeed's own checkpoint: per-rank model, optimizer and LR-scheduler state
        _COMPLETE              marker, written last
      .tmp-step-00000100/      a checkpoint being written (local URIs; renamed to step-... when done)
      model/                   the exported inference-ready model (default spec.output.uri)
      logs/                    loss curves (train.csv, eval.csv, TensorBoard events)
      metrics.json             best validation and test metrics of the finished run

Writing is atomic: everything goes to a temporary name (or, on object stores, to the final prefix without the
marker), then the marker is written last. Readers only ever use checkpoints with the marker, so a run killed
mid-save (Ctrl-C, a lost worker, a failed pod) resumes from the previous complete one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from .. import storage
from .evaluation import BestTracker, EarlyStoppingState

MARKER = "_COMPLETE"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINING_CONFIG_FILE = "training_config.json"
DEEPSPEED_TAG = "deepspeed"
METRICS_FILE = "metrics.json"
_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint at an optimizer step, sortable as text."""
    return f"step-{step:08d}"


def parse_checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint directory name, or None for anything else."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoints_to_delete(steps: list[int], keep_last: int, best_step: int | None) -> list[int]:
    """Steps of the checkpoints retention removes: all but the keep_last newest and the best one."""
    keep = set(sorted(steps)[-keep_last:]) if keep_last > 0 else set()
    if best_step is not None:
        keep.add(best_step)
    return sorted(s for s in steps if s not in keep)


def model_version(run_id: str, step: int) -> str:
    """Version id of the weights at a step of a run, e.g. `v300-1a2b3c4d`."""
    return f"v{step}-{run_id}"


@dataclass
class TrainerState:
    """Everything besides DeepSpeed's own state that a resumed run needs (trainer_state.json)."""

    run_id: str
    step: int = 0
    micro_batches_done: int = 0  # per worker; with the plan this gives the data position (epoch, batch in epoch)
    tokens_seen: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # BestTracker fields
    early_stopping: dict[str, Any] = field(default_factory=dict)  # EarlyStoppingState fields
    eval_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    finished: bool = False

    def best_tracker(self, metric: str, mode: str) -> BestTracker:
        """The best tracker stored in this state (fresh when the metric or mode changed)."""
        if self.best.get("metric") == metric and self.best.get("mode") == mode:
            return BestTracker(**self.best)
        return BestTracker(metric=metric, mode=mode)

    def early_stopping_state(self) -> EarlyStoppingState:
        """The early-stopping state stored in this state."""
        return EarlyStoppingState(**self.early_stopping)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        """Rebuild from to_dict() output, ignoring unknown keys."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _list_dir(uri: str) -> list[pafs.FileInfo]:
    fs, path = storage.resolve(uri)
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))


def list_checkpoints(root: str) -> dict[int, bool]:
    """{step: complete} for every step-* directory under root."""
    found: dict[int, bool] = {}
    for info in _list_dir(root):
        step = parse_checkpoint_step(info.base_name)
        if step is not None and info.type == pafs.FileType.Directory:
            found[step] = storage.exists(storage.join(root, info.base_name, MARKER))
    return found


def complete_checkpoints(root: str) -> list[int]:
    """Steps of the complete checkpoints under root, oldest first."""
    return sorted(step for step, complete in list_checkpoints(root).items() if complete)


def checkpoint_uri(root: str, step: int) -> str:
    """URI of the checkpoint at a step."""
    return storage.join(root, checkpoint_name(step))


def latest_checkpoint(root: str) -> str | None:
    """URI of the newest complete checkpoint under root, or None."""
    steps = complete_checkpoints(root)
    return checkpoint_uri(root, steps[-1]) if steps else None


def read_json(uri: str) -> dict[str, Any]:
    """A JSON file at a local path or URI."""
    return json.loads(storage.read_text(uri))


def read_trainer_state(checkpoint: str) -> TrainerState:
    """trainer_state.json of a checkpoint."""
    return TrainerState.from_dict(read_json(storage.join(checkpoint, TRAINER_STATE_FILE)))


def delete_dir(uri: str) -> None:
    """Remove a directory tree if it exists."""
    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def clear_checkpoints(root: str) -> list[int]:
    """Remove every step-* and .tmp-step-* directory under root; returns the steps removed."""
    removed = []
    for info in _list_dir(root):
        name = info.base_name.removeprefix(".tmp-")
        step = parse_checkpoint_step(name)
        if step is not None and info.type == pafs.FileType.Directory:
            delete_dir(storage.join(root, info.base_name))
            removed.append(step)
    return sorted(set(removed))


def apply_retention(root: str, keep_last: int, best_step: int | None) -> list[int]:
    """Delete the complete checkpoints retention does not keep, and incomplete ones older than the newest
    complete one (left behind by a killed save); returns the steps deleted."""
    found = list_checkpoints(root)
    complete = sorted(s for s, ok in found.items() if ok)
    doomed = checkpoints_to_delete(complete, keep_last, best_step)
    newest = complete[-1] if complete else -1
    doomed += [s for s, ok in found.items() if not ok and s < newest]
    for step in doomed:
        # The marker goes first, so a reader never sees a complete-looking checkpoint with files missing.
        fs, path = storage.resolve(storage.join(checkpoint_uri(root, step), MARKER))
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
        delete_dir(checkpoint_uri(root, step))
    return sorted(doomed)
