"""The API models: defaults, wire names and every validation rule (pydantic constraints and CEL rules)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.api import RESOURCE_MODELS, DataPipeline, ModelDeployment, TrainingJob
from kubeforge.validate import cel_problems, validate_document

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart"


def quickstart(kind: str) -> dict[str, Any]:
    """A deep copy of the quickstart manifest of that kind."""
    for path in sorted(QUICKSTART.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] == kind:
            return copy.deepcopy(doc)
    raise AssertionError(f"no {kind} in {QUICKSTART}")


def test_minimal_trainingjob_gets_documented_defaults() -> None:
    job = TrainingJob.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "t"},
            "spec": {"dataRef": {"name": "d"}, "training": {"maxSteps": 5}, "checkpoint": {"uri": "/tmp/c"}},
        }
    )
    spec = job.spec
    assert spec.deepspeed.zero_stage == 2
    assert spec.training.optimizer == "adamw"
    assert spec.training.betas == [0.9, 0.95]
    assert spec.model.init == "gpt2"
    assert spec.workers.count == 1
    assert spec.workers.memory == "2Gi"
    assert spec.failure_policy.max_retries == 0
    assert spec.suspend is False
    wire = job.to_wire()
    assert wire["spec"]["deepspeed"]["zeroStage"] == 2
    assert wire["spec"]["failurePolicy"]["maxWorkerFailures"] == 3
    assert "status" not in wire


def test_minimal_datapipeline_and_modeldeployment_defaults() -> None:
    dp = DataPipeline.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "DataPipeline",
            "metadata": {"name": "d"},
            "spec": {"source": {"uris": ["s3://b/x.jsonl"]}, "output": {"uri": "s3://b/out"}},
        }
    )
    assert dp.spec.split.train == 0.9 and dp.spec.split.method == "random"
    assert dp.spec.tokenizer.task == "languageModeling" and dp.spec.tokenizer.sequence_length == 256
    assert dp.spec.output.target_shard_size_mb == 128
    assert dp.to_wire()["spec"]["output"]["targetShardSizeMB"] == 128
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": {"modelUri": "/models/x"},
        }
    )
    assert md.spec.replicas.min == 1 and md.spec.replicas.max == 1
    assert md.spec.batching.max_batch_size == 16 and md.spec.quantization == "none"


def test_cleaning_step_reports_its_one_operation() -> None:
    dp = DataPipeline.model_validate(quickstart("DataPipeline"))
    ops = [step.operation()[0] for step in dp.spec.steps]
    assert ops[0] == "dropEmpty" and "exactDedup" in ops and ops[-1] == "nearDedup"
    name, params = dp.spec.steps[-1].operation()
    assert name == "nearDedup" and params.num_perm == 64


def _problems(doc: dict[str, Any]) -> list[str]:
    resource, problems = validate_document("test.yaml", doc)
    assert (resource is None) == bool(problems)
    return [f"{p.path}: {p.message}" for p in problems]


# (kind, dotted path to change, new value, expected field path, expected text in the message)
RULES = [
    ("TrainingJob", "spec.training.learningRate", 0, "spec.training.learningRate", "greater than 0"),
    ("TrainingJob", "spec.training.optimizer", "lamb", "spec.training.optimizer", "'adamw', 'adam' or 'sgd'"),
    ("TrainingJob", "spec.deepspeed.zeroStage", 4, "spec.deepspeed.zeroStage", "at most 3"),
    ("TrainingJob", "spec.deepspeed.offloadParameters", "cpu", "spec.deepspeed", "offloadParameters needs zeroStage 3"),
    ("TrainingJob", "spec.model.heads", 3, "spec.model", "divisible by model.heads"),
    ("TrainingJob", "spec.training.maxSteps", None, "spec.training", "epochs or maxSteps"),
    ("TrainingJob", "spec.dataRef.uri", "s3://x", "spec.dataRef", "exactly one of name or uri"),
    ("TrainingJob", "spec.workers.cpu", "two", "spec.workers.cpu", "not a Kubernetes quantity"),
    ("TrainingJob", "spec.workers.count", 0, "spec.workers.count", "at least 1"),
    ("TrainingJob", "spec.evaluation.metrics", ["bleu"], "spec.evaluation.metrics[0]", "must be"),
    ("TrainingJob", "spec.checkpoint", None, "spec.checkpoint", "required field is missing"),
    ("DataPipeline", "spec.split.train", 0.5, "spec.split", "must sum to 1"),
    ("DataPipeline", "spec.split.method", "hash", "spec.split", "method hash needs keyField"),
    ("DataPipeline", "spec.steps", [{"stripHtml": {}, "dropEmpty": {}}], "spec.steps[0]", "exactly one operation"),
    ("DataPipeline", "spec.steps", [{}], "spec.steps[0]", "exactly one operation"),
    (
        "DataPipeline",
        "spec.steps",
        [{"nearDedup": {"numPerm": 100, "bands": 16}}],
        "spec.steps[0].nearDedup",
        "multiple",
    ),
    ("DataPipeline", "spec.steps", [{"label": {"rules": [{"label": "x"}]}}], "spec.steps[0].label.rules[0]", "pattern"),
    ("DataPipeline", "spec.source.uris", ["/data"], "spec.source", "exactly one of uris, pvc or builtin"),
    ("DataPipeline", "spec.tokenizer.path", "/tok.json", "spec.tokenizer", "either path or train"),
    ("DataPipeline", "spec.output.targetShardSizeMB", -1, "spec.output.targetShardSizeMB", "greater than 0"),
    ("ModelDeployment", "spec.replicas.min", 3, "spec.replicas", "less than or equal"),
    ("ModelDeployment", "spec.modelUri", "/models/x", "spec", "exactly one of modelRef or modelUri"),
    ("ModelDeployment", "spec.canary", {"trafficPercent": 10}, "spec.canary", "exactly one of modelRef or modelUri"),
    ("ModelDeployment", "spec.canary", {"modelUri": "/m", "trafficPercent": 101}, "spec.canary.trafficPercent", "100"),
    ("ModelDeployment", "spec.quantization", "int4", "spec.quantization", "'none' or 'int8'"),
    ("ModelDeployment", "metadata.name", "Not_A_Name", "metadata.name", "DNS-1123"),
]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value


@pytest.mark.parametrize(("kind", "where", "value", "path", "text"), RULES, ids=[f"{r[0]}:{r[1]}" for r in RULES])
def test_every_rule_rejects_with_field_path(kind: str, where: str, value: Any, path: str, text: str) -> None:
    doc = quickstart(kind)
    assert _problems(copy.deepcopy(doc)) == []
    _set(doc, where, value)
    problems = _problems(doc)
    assert any(p.startswith(f"{path}: ") and text in p for p in problems), problems


def test_cel_rules_are_evaluated_against_defaulted_objects() -> None:
    # zeroStage defaults to 2, so offloading the optimizer passes and offloading parameters does not.
    wire = TrainingJob.model_validate(quickstart("TrainingJob")).to_wire()
    wire["spec"]["deepspeed"]["offloadOptimizer"] = "cpu"
    assert cel_problems("TrainingJob", wire) == []
    wire["spec"]["deepspeed"]["offloadParameters"] = "cpu"
    assert cel_problems("TrainingJob", wire) == [("spec.deepspeed", "offloadParameters needs zeroStage 3")]


@pytest.mark.parametrize("kind", sorted(RESOURCE_MODELS))
def test_status_models_accept_the_status_the_operator_writes(kind: str) -> None:
    doc = quickstart(kind)
    doc["status"] = {
        "phase": "Running",
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Starting",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    resource = RESOURCE_MODELS[kind].model_validate(doc)
    assert resource.status is not None and resource.status.conditions[0].type == "Ready"


def _labels_and_names(obj: Any) -> Any:
    """Every (label value, object name) pair found anywhere in a built child."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "labels" and isinstance(value, dict):
                yield from (("label", v) for v in value.values())
            elif key == "metadata" and isinstance(value, dict) and "name" in value:
                yield "name", value["name"]
            yield from _labels_and_names(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _labels_and_names(item)


def test_the_name_bound_is_what_the_children_need() -> None:
    """The CRDs' root rule bounds metadata.name at 63: the longest name still builds children whose label values
    (which carry the name) and names Kubernetes and KubeRay accept; one more character is refused."""
    from kubeforge.api.common import MAX_NAME_LENGTH
    from kubeforge.builders import ResolvedModel, build_monitor, build_rayjob, build_rayservice
    from kubeforge.builders.common import MAX_RAY_NAME_LENGTH
    from kubeforge.config import OperatorConfig

    config = OperatorConfig(trainer_image="t:1", ray_version="2.60.0")
    longest = "a" * MAX_NAME_LENGTH
    children = []
    for kind in ("DataPipeline", "TrainingJob", "ModelDeployment"):
        doc = quickstart(kind)
        doc["metadata"]["name"] = longest
        doc["metadata"]["namespace"] = "ml"
        if kind == "ModelDeployment":
            doc["spec"]["monitoring"] = {"enabled": True}
        resource, problems = validate_document("test.yaml", doc)
        assert problems == [] and resource is not None
        if kind == "ModelDeployment":
            service = build_rayservice(resource, config, model=ResolvedModel("s3://m", "v1"))
            children += [service, build_monitor(resource)]
            assert len(service["metadata"]["name"]) <= MAX_RAY_NAME_LENGTH
        else:
            rayjob = build_rayjob(resource, config, raw_spec=doc["spec"], data_uri="s3://d")
            children.append(rayjob)
            assert len(rayjob["metadata"]["name"]) <= MAX_RAY_NAME_LENGTH
        doc["metadata"]["name"] = longest + "a"
        assert [p.message for p in validate_document("test.yaml", doc)[1]] == [
            f"metadata.name must be at most {MAX_NAME_LENGTH} characters: child objects carry it as a label value"
        ]
    found = list(_labels_and_names(children))
    assert ("label", longest) in found
    for what, value in found:
        assert len(value) <= (63 if what == "label" else 253), (what, value)
