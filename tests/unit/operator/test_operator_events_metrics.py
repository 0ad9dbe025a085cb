"""Events for transitions, operator metrics, and the validation the operator adds to the CRD schema."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from kubeforge.builders import parse_resource
from kubeforge.conditions import set_condition
from kubeforge.events import Event, event_body, transition_events
from kubeforge.metrics import PhaseTracker
from kubeforge.validate import validate_document
from prometheus_client import CollectorRegistry, generate_latest
from support.manifests import quickstart_body


def with_condition(type_: str, status: bool, reason: str, message: str = "") -> list[dict[str, Any]]:
    """A condition list holding one condition."""
    return set_condition([], type_, status, reason, message, now="2026-01-01T00:00:00Z")


def test_each_phase_change_is_one_event_and_failures_are_warnings() -> None:
    assert transition_events({"phase": "Pending"}, {"phase": "Running", "message": "RayJob x is running"}) == [
        Event("Normal", "Started", "RayJob x is running")
    ]
    assert transition_events({"phase": "Running"}, {"phase": "Succeeded", "message": "done"}) == [
        Event("Normal", "Completed", "done")
    ]
    assert transition_events({"phase": "Running"}, {"phase": "Failed", "message": "boom"}) == [
        Event("Warning", "Failed", "boom")
    ]
    assert transition_events({"phase": "Ready", "message": "m"}, {"phase": "Ready", "message": "m"}) == []


def test_a_retry_is_one_warning_and_nothing_but_phases_and_ignored_specs_post_events() -> None:
    old = {"phase": "Running", "retries": 0, "childName": "gpt-train", "message": "Ray job failed: OOM"}
    new = {"phase": "Pending", "retries": 1, "childName": "gpt-train-r1", "message": "RayJob gpt-train-r1: created"}
    [retry] = transition_events(old, new)  # the retry is the transition: no separate Pending or Created Event
    assert (retry.type, retry.reason) == ("Warning", "Retrying") and "OOM" in retry.message

    # A new waiting reason, a new child name, a new message within one phase: status only, no Event (API write).
    waiting = {
        "phase": "Pending",
        "message": "DataPipeline d not found",
        "conditions": with_condition("DataReady", False, "DataPipelineNotFound", "DataPipeline d not found"),
    }
    assert transition_events({}, waiting) == [Event("Normal", "Pending", "DataPipeline d not found")]
    other = {
        "phase": "Pending",
        "childName": "gpt-train",
        "message": "waiting for DataPipeline d (Running)",
        "conditions": with_condition("DataReady", False, "DataPipelineNotReady", "waiting"),
    }
    assert transition_events(waiting, other) == []

    locked = {"conditions": with_condition("SpecLocked", True, "SpecChangeIgnored", "spec changed")}
    assert transition_events({}, locked) == [Event("Warning", "SpecChangeIgnored", "spec changed")]
    assert transition_events(locked, locked) == []


def test_an_event_names_its_object_and_reporter_as_kubectl_shows_them() -> None:
    owner = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "gpt", "namespace": "ml", "uid": "u-1", "resourceVersion": "42", "managedFields": [{}]},
    }
    now = datetime.datetime(2026, 12, 6, 7, 0, 0, tzinfo=datetime.timezone.utc)  # no fraction: MicroTime needs one
    body = event_body(owner, Event("Warning", "Failed", "x" * 2000), "kubeforge-operator", "operator-0", now)
    assert body == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": "ml", "generateName": "gpt."},
        "involvedObject": {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "gpt",
            "namespace": "ml",
            "uid": "u-1",
            "resourceVersion": "42",
        },
        "type": "Warning",
        "reason": "Failed",
        "message": "x" * 1024,
        "action": "Failed",
        "source": {"component": "kubeforge-operator"},
        "reportingComponent": "kubeforge-operator",
        "reportingInstance": "operator-0",
        "firstTimestamp": "2026-12-06T07:00:00Z",
        "lastTimestamp": "2026-12-06T07:00:00Z",
        "eventTime": "2026-12-06T07:00:00.000000Z",
        "count": 1,
    }


def test_phase_tracker_counts_every_kind_and_phase_and_forgets_deleted_resources() -> None:
    tracker = PhaseTracker()
    tracker.set("TrainingJob", "ml", "a", "Running")
    tracker.set("TrainingJob", "ml", "b", "Running")
    tracker.set("TrainingJob", "ml", "a", "Succeeded")
    tracker.set("ModelDeployment", "ml", "m", "Ready")
    counts = tracker.counts()
    assert counts[("TrainingJob", "Running")] == 1 and counts[("TrainingJob", "Succeeded")] == 1
    assert counts[("DataPipeline", "Pending")] == 0
    tracker.forget("TrainingJob", "ml", "b")
    assert tracker.counts()[("TrainingJob", "Running")] == 0
    registry = CollectorRegistry()
    registry.register(tracker)
    text = generate_latest(registry).decode()
    assert 'kubeforge_resources{kind="TrainingJob",phase="Succeeded"} 1.0' in text
    assert 'kubeforge_resources{kind="ModelDeployment",phase="Ready"} 1.0' in text


def test_quickstart_resources_are_valid() -> None:
    for kind in ("DataPipeline", "TrainingJob", "ModelDeployment"):
        resource, problem = parse_resource(quickstart_body(kind))
        assert problem is None and resource is not None and resource.kind == kind


@pytest.mark.parametrize(
    ("kind", "change", "expected"),
    [
        (
            "TrainingJob",
            lambda s: s["workers"].update(cpu="lots"),
            "TrainingJob ml/quickstart-gpt: spec.workers.cpu: 'lots' is not a Kubernetes quantity",
        ),
        (
            "TrainingJob",
            lambda s: s["model"].update(lora={"rank": 4}),
            "TrainingJob ml/quickstart-gpt: spec.model.lora: LoRA adapts pretrained weights",
        ),
        (
            "TrainingJob",
            lambda s: s["evaluation"].update(metrics=["perplexity"], earlyStopping={"metric": "f1"}),
            "spec.evaluation.earlyStopping.metric: 'f1' is not computed",
        ),
        (
            "ModelDeployment",
            lambda s: s.update(quantization="int8", resources={"gpu": 1}),
            "ModelDeployment ml/quickstart-gpt: spec.quantization: int8 quantisation serves on CPU only",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_resource_and_field(kind: str, change: Any, expected: str) -> None:
    body = quickstart_body(kind)
    change(body["spec"])
    resource, problem = parse_resource(body)
    assert resource is None and problem is not None
    assert expected in problem and "\n" not in problem


@pytest.mark.parametrize(
    ("kind", "change", "expected"),
    [
        (
            "TrainingJob",
            lambda s: s["model"].update(hiddenSize=100, heads=3),
            "spec.model: model.hiddenSize must be divisible by model.heads",
        ),
        (
            "DataPipeline",
            lambda s: s["split"].update(train=0.5),
            "spec.split: split fractions train + validation + test must sum to 1",
        ),
    ],
)
def test_crd_rules_are_the_api_servers_and_not_repeated_on_stored_objects(
    kind: str, change: Any, expected: str
) -> None:
    # A real API server refuses such an object at admission (CEL rules of the CRD); the operator only reads stored
    # objects, so it does not pay for evaluating every rule again. `kubeforge validate` and the local runner do.
    body = quickstart_body(kind)
    change(body["spec"])
    document = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec")}
    resource, problems = validate_document("manifest", document)
    assert resource is None and any(expected in f"{p.path}: {p.message}" for p in problems)
    assert parse_resource(body)[1] is None


def test_status_written_by_others_does_not_fail_validation() -> None:
    body = quickstart_body("TrainingJob")
    body["status"] = {"phase": "Running", "step": 5, "someFutureField": 1}
    body["metadata"].update(resourceVersion="7", finalizers=["kubeforge.dev/finalizer"], managedFields=[{}])
    assert parse_resource(body)[1] is None
