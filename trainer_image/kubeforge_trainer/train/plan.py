"""Pure planning of a training run: spec checks against the dataset, resolved metrics and step counts.

Nothing here touches Ray, DeepSpeed or files: every function takes plain values and returns plain values, so the
rules are unit-tested on their own and the driver fails fast, with one line naming the resource and the field, before
any worker starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from kubeforge.api.common import parse_quantity
from kubeforge.api.trainingjob import (
    OBJECTIVE_DATA_TASK,
    OBJECTIVE_METRICS,
    TrainingJobSpec,
    evaluation_metrics,
    objective_of,
)

from ..data.columns import CHAT_COLUMNS, PREFERENCE_COLUMNS

LANGUAGE_MODELING = "languageModeling"
CLASSIFICATION = "classification"

SPLITS = ("train", "validation", "test")

# Objectives (spec.objective; unset: model.task). sft and dpo train causal LMs on the DataPipeline's chat and
# preference data; train/objectives.py has their losses. Their metrics are the API's OBJECTIVE_METRICS.
SFT = "sft"
DPO = "dpo"
CHAT_DATA = "chat"
PREFERENCE_DATA = "preference"
METRICS_FOR_OBJECTIVE = OBJECTIVE_METRICS
LM_METRICS = OBJECTIVE_METRICS[LANGUAGE_MODELING]
DPO_METRICS = OBJECTIVE_METRICS[DPO]
# The Parquet columns each dataset task is read with.
DATA_COLUMNS = {
    LANGUAGE_MODELING: ("input_ids",),
    CLASSIFICATION: ("input_ids", "label"),
    CHAT_DATA: CHAT_COLUMNS,
    PREFERENCE_DATA: PREFERENCE_COLUMNS,
}


def check_dataset_task(resource_name: str, spec: TrainingJobSpec, dataset_task: str, data_uri: str) -> None:
    """SpecError unless the dataset was built for the objective (sft needs chat data, dpo preference pairs)."""
    objective = objective_of(spec)
    wanted = OBJECTIVE_DATA_TASK[objective]
    if dataset_task == wanted:
        return
    if spec.objective is None:
        problem = f"is {objective} but the dataset at {data_uri} was built for {dataset_task}"
        raise spec_error(resource_name, "spec.model.task", problem)
    problem = f"{objective} trains on {wanted} data, but the dataset at {data_uri} was built for {dataset_task}"
    raise spec_error(resource_name, "spec.objective", problem)


class SpecError(ValueError):
    """A TrainingJob that cannot run as written; the message names the resource and the field."""


def spec_error(resource_name: str, field_path: str, message: str) -> SpecError:
    """A SpecError worded `TrainingJob/<name>: <field>: <message>`."""
    return SpecError(f"TrainingJob/{resource_name}: {field_path}: {message}")


@dataclass(frozen=True)
class SplitInfo:
    """One split of a DataPipeline output."""

    rows: int
    tokens: int
    shards: tuple[str, ...]  # paths relative to the dataset root


@dataclass(frozen=True)
class DatasetInfo:
    """The parts of a dataset's `_manifest.json` that training depends on."""

    uri: str
    task: str
    sequence_length: int
    vocab_size: int
    pad_token_id: int
    eos_token_id: int | None
    labels: tuple[str, ...]
    tokenizer: str
    splits: dict[str, SplitInfo] = field(default_factory=dict)

    def rows(self, split: str) -> int:
        """Rows in a split (0 when the split is absent)."""
        info = self.splits.get(split)
        return info.rows if info else 0


def parse_manifest(resource_name: str, uri: str, manifest: dict[str, Any]) -> DatasetInfo:
    """DatasetInfo from a `_manifest.json` document; a SpecError names what is missing or wrong."""
    field_path = f"dataset {uri}"

    def need(key: str) -> Any:
        if key not in manifest:
            raise spec_error(resource_name, field_path, f"_manifest.json has no {key!r}")
        return manifest[key]

    version = manifest.get("formatVersion", 1)
    if version != 1:
        raise spec_error(resource_name, field_path, f"_manifest.json formatVersion {version} is not supported (1)")
    if manifest.get("format", "tokenized") != "tokenized":
        problem = f"holds {manifest['format']} (output.format), not token ids: train on a tokenized DataPipeline output"
        raise spec_error(resource_name, field_path, problem)
    task = need("task")
    if task not in DATA_COLUMNS:
        raise spec_error(resource_name, field_path, f"unknown task {task!r} in _manifest.json")
    splits: dict[str, SplitInfo] = {}
    for name, raw in (need("splits") or {}).items():
        if name not in SPLITS or not raw:
            continue
        shards = tuple(s["path"] for s in raw.get("shards", []) if s.get("rows", 1) > 0)
        splits[name] = SplitInfo(rows=int(raw.get("rows", 0)), tokens=int(raw.get("tokens", 0)), shards=shards)
    return DatasetInfo(
        uri=uri,
        task=task,
        sequence_length=int(need("sequenceLength")),
        vocab_size=int(need("vocabSize")),
        pad_token_id=int(manifest.get("padTokenId") or 0),
        eos_token_id=manifest.get("eosTokenId"),
        labels=tuple(manifest.get("labels") or ()),
        tokenizer=manifest.get("tokenizer") or "tokenizer.json",
        splits=splits,
    )


def resolve_eval_metrics(spec: TrainingJobSpec) -> list[str]:
    """The validation metrics to compute: as written, or the objective's full set when evaluation.metrics is unset."""
    return evaluation_metrics(spec)


@dataclass(frozen=True)
class TrainPlan:
    """Step accounting of a run, identical on every worker."""

    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    micro_batches_per_epoch: int  # per worker: its equal share of train rows, full micro-batches only
    total_steps: int
    total_micro_batches: int
    epochs: float  # planned passes over the train split
    eval_metrics: tuple[str, ...]
    has_validation: bool
    has_test: bool
    dropped_train_rows: int  # rows no worker sees each epoch (uneven shares, last partial micro-batch)

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps per pass over the train split (fractional when accumulation spans epochs)."""
        return self.micro_batches_per_epoch / self.gradient_accumulation_steps

    @property
    def sequences_per_step(self) -> int:
        """Sequences consumed by one optimizer step over all workers."""
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (sent to the workers, stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainPlan:
        """Rebuild from to_dict() output."""
        return cls(**{**data, "eval_metrics": tuple(data["eval_metrics"])})


def plan_training(resource_name: str, spec: TrainingJobSpec, dataset: DatasetInfo, world_size: int) -> TrainPlan:
    """Check the spec against the dataset and count steps; raises SpecError naming the first bad field."""
    task, training, evaluation = spec.model.task, spec.training, spec.evaluation
    objective = objective_of(spec)
    err = lambda path, msg: spec_error(resource_name, path, msg)  # noqa: E731
    check_dataset_task(resource_name, spec, dataset.task, dataset.uri)
    # Packed language-model rows feed sequenceLength - 1 tokens (the last one is only a target); chat, preference
    # and classification rows feed all of theirs.
    context_needed = dataset.sequence_length - 1 if objective == LANGUAGE_MODELING else dataset.sequence_length
    if spec.model.pretrained is None and spec.model.context_length < context_needed:  # pretrained: resolve_model
        raise err(
            "spec.model.contextLength",
            f"{spec.model.context_length} is shorter than the dataset's sequences ({context_needed} tokens)",
        )
    if task == CLASSIFICATION:
        labels = len(dataset.labels)
        if spec.model.num_labels is None and labels < 2:
            raise err("spec.model.numLabels", f"the dataset lists {labels} label(s); set numLabels (>= 2)")
        if spec.model.num_labels is not None and labels and spec.model.num_labels < labels:
            raise err(
                "spec.model.numLabels",
                f"{spec.model.num_labels} is fewer than the dataset's {labels} labels",
            )
    allowed = METRICS_FOR_OBJECTIVE[objective]
    metrics = resolve_eval_metrics(spec)
    for name in metrics:
        if name not in allowed:
            raise err("spec.evaluation.metrics", f"{name} is not defined for {objective} (use {', '.join(allowed)})")
    if evaluation.best_metric not in metrics:
        raise err("spec.evaluation.bestMetric", f"{evaluation.best_metric} is not among the metrics {metrics}")
    if evaluation.early_stopping and evaluation.early_stopping.metric not in metrics:
        raise err(
            "spec.evaluation.earlyStopping.metric",
            f"{evaluation.early_stopping.metric} is not among the metrics {metrics}",
        )
    train_rows = dataset.rows("train")
    per_worker_rows = train_rows // world_size
    micro_per_epoch = per_worker_rows // training.micro_batch_size
    accumulation = training.gradient_accumulation_steps
    if micro_per_epoch < accumulation:
        needed = world_size * training.micro_batch_size * accumulation
        raise err(
            "spec.training.microBatchSize",
            f"the train split has {train_rows} rows, fewer than one optimizer step needs "
            f"({world_size} workers x microBatchSize {training.micro_batch_size} x "
            f"gradientAccumulationSteps {accumulation} = {needed})",
        )
    if training.max_steps is not None:
        total_steps = training.max_steps
    else:
        total_steps = (training.epochs or 1) * micro_per_epoch // accumulation
    total_micro = total_steps * accumulation
    return TrainPlan(
        world_size=world_size,
        micro_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        micro_batches_per_epoch=micro_per_epoch,
        total_steps=total_steps,
        total_micro_batches=total_micro,
        epochs=total_micro / micro_per_epoch,
        eval_metrics=tuple(metrics),
        has_validation=dataset.rows("validation") >= world_size,
        has_test=evaluation.test and dataset.rows("test") >= world_size,
        dropped_train_rows=train_rows - micro_per_epoch * training.micro_batch_size * world_size,
    )


def data_position(micro_batches_done: int, micro_batches_per_epoch: int) -> tuple[int, int]:
    """(epoch index, micro-batches already consumed in that epoch) after micro_batches_done in total."""
    return divmod(micro_batches_done, micro_batches_per_epoch)


def worker_resources(cpu: int | float | str, memory: int | float | str, gpu: int) -> dict[str, float]:
    """Ray resources of one training worker from spec.workers (CPU, GPU, memory in bytes)."""
    resources = {"CPU": parse_quantity(cpu), "memory": float(math.floor(parse_quantity(memory)))}
    if gpu:
        resources["GPU"] = float(gpu)
    return resources
