"""Planning: manifest parsing, spec checks against the dataset, step counts, data position, quantities."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge_trainer.train.plan import (
    DatasetInfo,
    SpecError,
    data_position,
    parse_manifest,
    parse_quantity,
    plan_training,
    resolve_eval_metrics,
    worker_resources,
)


def manifest(task: str = "languageModeling", train_rows: int = 100, **extra: Any) -> dict[str, Any]:
    split = lambda rows: {"rows": rows, "tokens": rows * 33, "shards": [{"path": "x.parquet", "rows": rows}]}  # noqa: E731
    return {
        "formatVersion": 1,
        "task": task,
        "sequenceLength": 33,
        "tokenizer": "tokenizer.json",
        "vocabSize": 512,
        "padTokenId": 0,
        "eosTokenId": 1,
        "labels": ["a", "b", "c"] if task == "classification" else [],
        "splits": {"train": split(train_rows), "validation": split(10), "test": split(1)},
        **extra,
    }


def spec(**overrides: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {
        "dataRef": {"uri": "/d"},
        "model": {"contextLength": 32},
        "training": {"epochs": 2, "microBatchSize": 4},
        "checkpoint": {"uri": "/c"},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainingJobSpec.model_validate(base)


def info(**kw: Any) -> DatasetInfo:
    return parse_manifest("job", "/data", manifest(**kw))


def test_parse_manifest_reads_the_contract_fields() -> None:
    parsed = info(task="classification")
    assert parsed.task == "classification"
    assert parsed.sequence_length == 33 and parsed.vocab_size == 512
    assert parsed.labels == ("a", "b", "c")
    assert parsed.rows("train") == 100 and parsed.rows("validation") == 10 and parsed.rows("nope") == 0
    assert parsed.splits["train"].shards == ("x.parquet",)


def test_parse_manifest_names_a_missing_key_and_rejects_unknown_versions() -> None:
    broken = manifest()
    del broken["vocabSize"]
    with pytest.raises(SpecError, match=r"TrainingJob/job: dataset /data: _manifest.json has no 'vocabSize'"):
        parse_manifest("job", "/data", broken)
    with pytest.raises(SpecError, match="formatVersion 2"):
        parse_manifest("job", "/data", manifest(formatVersion=2))


def test_epochs_count_full_micro_batches_of_equal_worker_shares() -> None:
    # 100 rows / 2 workers = 50 each -> 12 micro-batches of 4 (2 rows left) -> 2 epochs = 24 micro = 12 steps (accum 2)
    plan = plan_training("job", spec(training={"gradientAccumulationSteps": 2}), info(), world_size=2)
    assert plan.micro_batches_per_epoch == 12
    assert plan.total_steps == 12 and plan.total_micro_batches == 24
    assert plan.epochs == 2.0
    assert plan.steps_per_epoch == 6.0
    assert plan.sequences_per_step == 16
    assert plan.dropped_train_rows == 100 - 12 * 4 * 2
    assert plan.has_validation and not plan.has_test  # 1 test row cannot be shared by 2 workers


def test_max_steps_wins_over_epochs_and_may_span_epochs() -> None:
    plan = plan_training("job", spec(training={"maxSteps": 30}), info(), world_size=2)
    assert plan.total_steps == 30
    assert plan.epochs == pytest.approx(30 / 12)


def test_a_split_too_small_for_one_step_names_the_batch_fields() -> None:
    with pytest.raises(SpecError, match=r"spec.training.microBatchSize: the train split has 10 rows"):
        plan_training("job", spec(training={"microBatchSize": 8}), info(train_rows=10), world_size=2)


def test_task_and_context_must_fit_the_dataset() -> None:
    with pytest.raises(SpecError, match=r"spec.model.task: is classification but the dataset .* languageModeling"):
        plan_training("job", spec(model={"task": "classification"}), info(), 1)
    with pytest.raises(SpecError, match=r"spec.model.contextLength: 16 is shorter than the dataset's sequences \(32"):
        plan_training("job", spec(model={"contextLength": 16}), info(), 1)


def test_metrics_must_belong_to_the_task() -> None:
    with pytest.raises(SpecError, match=r"spec.evaluation.metrics: accuracy is not defined for languageModeling"):
        plan_training("job", spec(evaluation={"metrics": ["loss", "accuracy"]}), info(), 1)
    with pytest.raises(SpecError, match=r"spec.evaluation.bestMetric: f1 is not among"):
        plan_training("job", spec(evaluation={"bestMetric": "f1"}), info(), 1)
    early = {"earlyStopping": {"metric": "perplexity"}, "metrics": ["loss"]}
    with pytest.raises(SpecError, match=r"spec.evaluation.earlyStopping.metric: perplexity"):
        plan_training("job", spec(evaluation=early), info(), 1)


def test_classification_defaults_to_its_metrics_and_checks_num_labels() -> None:
    cls = spec(model={"task": "classification", "contextLength": 33})
    assert resolve_eval_metrics(cls) == ["loss", "accuracy", "precision", "recall", "f1"]
    assert resolve_eval_metrics(spec()) == ["loss", "perplexity"]
    assert plan_training("job", cls, info(task="classification"), 1).eval_metrics[1] == "accuracy"
    with pytest.raises(SpecError, match=r"spec.model.numLabels: 2 is fewer than the dataset's 3 labels"):
        two = spec(model={"task": "classification", "numLabels": 2, "contextLength": 33})
        plan_training("job", two, info(task="classification"), 1)


def test_plan_round_trips_through_a_dict() -> None:
    plan = plan_training("job", spec(), info(), 2)
    assert type(plan).from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("done", "per_epoch", "expected"),
    [(0, 12, (0, 0)), (11, 12, (0, 11)), (12, 12, (1, 0)), (30, 12, (2, 6))],
)
def test_data_position(done: int, per_epoch: int, expected: tuple[int, int]) -> None:
    assert data_position(done, per_epoch) == expected


def test_quantities_and_worker_resources() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(2) == 2.0
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("2Gx")
    assert worker_resources("1500m", "512Mi", 0) == {"CPU": 1.5, "memory": 512 * 2**20}
    assert worker_resources(2, "1G", 1) == {"CPU": 2.0, "memory": 1e9, "GPU": 1.0}
