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

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
from kubeforge.wording import plural

from .. import storage
from .evaluation import BestTracker, EarlyStoppingState
from .plan import spec_error

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
    identity: dict[str, Any] = field(default_factory=dict)  # run_identity() of the run that wrote it
    planned_steps: int | None = None  # the plan's total steps when it was written

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


# ---------------------------------------------------------------- run identity

# Spec fields that do not change what a run computes step by step: how long it runs (a changed length is checked
# on its own, see decide_resume), where it writes, how it evaluates and reports, and where and with what pod
# resources it runs. Everything else under spec is part of the run's identity, so a field added to the API later
# (say spec.model.architecture, spec.objective) counts without an edit here; a field wrongly counted only makes a
# resume refuse, naming it, while a field wrongly left out could load a foreign checkpoint. Paths are camelCase
# wire paths; a path that is not in the spec is harmless.
IDENTITY_EXCLUDED = (
    "training.epochs",
    "training.maxSteps",
    "training.logIntervalSteps",
    "evaluation",
    "checkpoint",
    "output",
    "failurePolicy",
    "dataRef",  # replaced by the dataset's own hash: the same name may hold other data, another name the same
    "workers.cpu",
    "workers.memory",
    # Scheduling and pod fields (CommonSpec and the pod overrides).
    "image",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
    "serviceAccountName",
    "queueName",
    "suspend",
    "ttlSecondsAfterFinished",
    "pod",  # pod overrides: securityContext, env, envFrom, volumes
    "podTemplate",
    "securityContext",
    "env",
    "envFrom",
    "volumes",
    "resources",
    "logging",
)

# _manifest.json keys that change each time the same dataset is written again.
DATASET_VOLATILE_KEYS = ("createdAt", "timings", "operations")


def dataset_hash(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a dataset's _manifest.json without its per-write keys (times, durations)."""
    stable = {k: v for k, v in manifest.items() if k not in DATASET_VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def run_identity(spec: Mapping[str, Any], data_hash: str) -> dict[str, Any]:
    """The training-relevant part of a TrainingJob spec (wire form) as {dotted field path: value}, plus the
    dataset's hash under `dataset`: two runs with the same identity compute the same trajectory."""
    flat: dict[str, Any] = {}
    _flatten(spec, "", flat)
    kept = {
        path: value
        for path, value in flat.items()
        if not any(path == ex or path.startswith(ex + ".") for ex in IDENTITY_EXCLUDED)
    }
    return {**kept, "dataset": data_hash}


def fingerprint(identity: Mapping[str, Any]) -> str:
    """Short stable hash of a run identity (what checkpoints and logs show)."""
    text = json.dumps(dict(identity), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'spec.<path> <old> -> <new>' for every field whose value differs (a missing field shows as unset)."""
    out = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path, "unset"), new.get(path, "unset")
        if before != after:
            shown = "the dataset" if path == "dataset" else f"spec.{path}"
            if path == "dataset":
                out.append(f"{shown} ({str(before)[:8]} -> {str(after)[:8]})")
            else:
                out.append(f"{shown} {json.dumps(before)} -> {json.dumps(after)}")
    return out


@dataclass(frozen=True)
class ResumeDecision:
    """What a starting run does with the checkpoints under its checkpoint.uri."""

    checkpoint: str | None = None  # URI of the checkpoint to resume from; None starts at step 0
    step: int = 0
    extended_from: int | None = None  # the planned steps of the finished run being extended


def decide_resume(
    resource_name: str,
    latest: str | None,
    state: TrainerState | None,
    identity: Mapping[str, Any],
    planned_steps: int,
    length_field: str,
    extend: bool,
) -> ResumeDecision:
    """Resume from the newest checkpoint only when it belongs to this run: same identity and the same planned
    length (or a longer one with checkpoint.extend); otherwise a SpecError naming what differs and what to set.
    A checkpoint of another configuration is never loaded and a model never goes past its planned steps."""
    if latest is None or state is None:
        return ResumeDecision()
    root = latest.rstrip("/").rsplit("/", 1)[0]
    fresh = (
        "set spec.checkpoint.resume: false to delete them and start afresh, or point spec.checkpoint.uri at a new "
        "directory"
    )
    warm = f"(to start from their weights on purpose: spec.model.pretrained.uri: {latest} and a new checkpoint.uri)"
    if not state.identity:
        problem = f"{root} holds checkpoints written without a run identity (an older kubeforge): {fresh}"
        raise spec_error(resource_name, "spec.checkpoint.uri", problem)
    differences = identity_differences(state.identity, identity)
    if differences:
        problem = (
            f"{root} holds checkpoints of another configuration ({'; '.join(differences)}), which are never "
            f"loaded: {fresh} {warm}"
        )
        raise spec_error(resource_name, "spec.checkpoint.uri", problem)
    planned_before = state.planned_steps if state.planned_steps is not None else planned_steps
    if planned_before == planned_steps:
        return ResumeDecision(latest, state.step)
    if state.step > planned_steps:
        problem = (
            f"the checkpoints in {root} are at step {state.step}, past the {plural(planned_steps, 'step')} this spec "
            f"plans (a model is never trained or reported beyond its planned steps): {fresh}"
        )
        raise spec_error(resource_name, length_field, problem)
    if not extend:
        problem = (
            f"the checkpoints in {root} are of the same run planned for {plural(planned_before, 'step')} (newest: step "
            f"{state.step}); this spec plans {planned_steps}: set spec.checkpoint.extend: true to continue that run "
            f"to step {planned_steps} (its learning-rate schedule is stretched to the new length), or {fresh}"
        )
        raise spec_error(resource_name, length_field, problem)
    return ResumeDecision(latest, state.step, extended_from=planned_before)
