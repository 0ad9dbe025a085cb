"""Status derivation: KubeRay's RayJob / RayService states to our phase and conditions, terminal states, patches."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api import DataPipelineStatus, ModelDeploymentStatus, TrainingJobStatus
from kubeforge.builders import spec_hash
from kubeforge.conditions import get_condition
from kubeforge.constants import ANNOTATION_SPEC_HASH
from kubeforge.handlers.jobs import spec_lock_message
from kubeforge.status import (
    ChildState,
    Dependency,
    Observation,
    derive_status,
    is_settled,
    rayjob_state,
    rayservice_state,
    status_patch,
)

NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"


def rayjob(deployment: str = "", job: str = "", **status: Any) -> dict[str, Any]:
    """A RayJob as KubeRay reports it."""
    body: dict[str, Any] = {"metadata": {"name": "gpt-train"}, "status": dict(status)}
    if deployment:
        body["status"]["jobDeploymentStatus"] = deployment
    if job:
        body["status"]["jobStatus"] = job
    return body


@pytest.mark.parametrize(
    ("deployment", "job", "phase", "reason", "progressing"),
    [
        ("", "", "Pending", "ClusterStarting", True),
        ("Initializing", "", "Pending", "ClusterStarting", True),
        ("Waiting", "", "Pending", "ClusterStarting", True),
        ("Running", "PENDING", "Running", "JobPending", True),
        ("Running", "RUNNING", "Running", "JobRunning", True),
        ("Running", "SUCCEEDED", "Succeeded", "JobSucceeded", False),
        ("Complete", "SUCCEEDED", "Succeeded", "JobSucceeded", False),
        ("Complete", "FAILED", "Failed", "JobFailed", False),
        ("Complete", "STOPPED", "Failed", "JobStopped", False),
        ("Failed", "", "Failed", "JobDeploymentFailed", False),
        ("Suspending", "RUNNING", "Suspended", "Suspending", False),
        ("Suspended", "", "Suspended", "Suspended", False),
        ("Retrying", "FAILED", "Failed", "JobFailed", False),
        ("Retrying", "", "Pending", "Retrying", True),
    ],
)
def test_rayjob_states_map_to_our_phases(deployment: str, job: str, phase: str, reason: str, progressing: bool) -> None:
    state = rayjob_state(rayjob(deployment, job))
    assert (state.phase, state.reason, state.progressing) == (phase, reason, progressing)


def test_rayjob_failure_carries_kuberays_reason_and_message() -> None:
    state = rayjob_state(rayjob("Failed", reason="DeadlineExceeded", message="activeDeadlineSeconds reached"))
    assert state.phase == "Failed" and state.reason == "DeadlineExceeded"
    assert "activeDeadlineSeconds reached" in state.message
    assert state.retryable
    assert not rayjob_state(rayjob("Complete", "STOPPED")).retryable


def rayservice(ready: bool = False, apps: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """A RayService as KubeRay reports it."""
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if apps is not None:
        status["activeServiceStatus"] = {
            "applicationStatuses": {app: {"status": s, "message": f"{app} says {s}"} for app, s in apps.items()}
        }
    status.update(extra.pop("status", {}))
    return {"metadata": {"name": "gpt", "generation": extra.pop("generation", 1)}, "spec": extra, "status": status}


@pytest.mark.parametrize(
    ("service", "phase", "reason"),
    [
        (rayservice(), "Deploying", "Deploying"),
        (rayservice(apps={"gpt": "DEPLOYING"}), "Deploying", "Deploying"),
        (rayservice(ready=True, apps={"gpt": "RUNNING"}), "Ready", "Serving"),
        (rayservice(apps={"gpt": "DEPLOY_FAILED"}), "Failed", "DeployFailed"),
        (rayservice(ready=True, apps={"gpt": "UNHEALTHY"}), "Degraded", "ApplicationUnhealthy"),
        (rayservice(ready=True, apps={"gpt": "DEPLOY_FAILED"}), "Degraded", "DeployFailed"),
        (rayservice(status={"serviceStatus": "Running"}), "Ready", "Serving"),
        (rayservice(ready=True, suspend=True), "Suspended", "Suspended"),
    ],
)
def test_rayservice_states_map_to_our_phases(service: dict[str, Any], phase: str, reason: str) -> None:
    state = rayservice_state(service)
    assert (state.phase, state.reason) == (phase, reason)


def test_rayservice_rollout_is_progressing_while_still_serving() -> None:
    upgrading = rayservice(ready=True, apps={"gpt": "RUNNING"})
    upgrading["status"]["conditions"].append({"type": "UpgradeInProgress", "status": "True"})
    assert rayservice_state(upgrading).progressing and rayservice_state(upgrading).phase == "Ready"
    stale = rayservice(ready=True, apps={"gpt": "RUNNING"}, generation=3, status={"observedGeneration": 2})
    assert rayservice_state(stale).reason == "RollingOut"
    current = rayservice(ready=True, apps={"gpt": "RUNNING"}, generation=3, status={"observedGeneration": 3})
    assert not rayservice_state(current).progressing


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{type: (status, reason)}."""
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_waiting_for_data_is_pending_with_a_datarady_condition_naming_the_reason() -> None:
    dependency = Dependency(False, "DataPipelineNotFound", "DataPipeline corpus not found in ml")
    status = derive_status("TrainingJob", {}, 1, Observation(dependency=dependency), now=NOW)
    assert status["phase"] == "Pending"
    assert status["message"] == "DataPipeline corpus not found in ml"
    assert conditions(status) == {
        "Ready": ("False", "DataPipelineNotFound"),
        "Progressing": ("False", "DataPipelineNotFound"),
        "Failed": ("False", "NoFailure"),
        "Suspended": ("False", "NotSuspended"),
        "DataReady": ("False", "DataPipelineNotFound"),
    }
    assert status["observedGeneration"] == 1 and status["startTime"] is None
    TrainingJobStatus.model_validate(status)


def test_running_then_succeeded_sets_times_and_ready() -> None:
    running = ChildState("Running", "JobRunning", "RayJob gpt-train is running", progressing=True)
    data = Dependency(True, "DataPipelineSucceeded", "DataPipeline corpus wrote s3://d")
    first = derive_status("TrainingJob", {}, 2, Observation("gpt-train", running, data), now=NOW)
    assert first["phase"] == "Running" and first["childName"] == "gpt-train"
    assert first["startTime"] == NOW and first["completionTime"] is None
    assert conditions(first)["Progressing"] == ("True", "JobRunning")
    assert conditions(first)["DataReady"] == ("True", "DataPipelineSucceeded")
    done = ChildState("Succeeded", "JobSucceeded", "RayJob gpt-train succeeded", end_time="2026-01-02T03:59:00Z")
    second = derive_status("TrainingJob", first, 2, Observation("gpt-train", done), now=LATER)
    assert second["phase"] == "Succeeded"
    assert second["startTime"] == NOW and second["completionTime"] == "2026-01-02T03:59:00Z"
    assert conditions(second)["Ready"] == ("True", "JobSucceeded")
    assert conditions(second)["Progressing"] == ("False", "JobSucceeded")
    # Without a dependency observation the DataReady condition stays as it was.
    assert get_condition(second["conditions"], "DataReady") == get_condition(first["conditions"], "DataReady")
    ready = get_condition(second["conditions"], "Ready")
    assert ready is not None and ready["lastTransitionTime"] == LATER
    TrainingJobStatus.model_validate(second)


def test_lasttransitiontime_changes_only_with_the_condition_status() -> None:
    running = ChildState("Running", "JobRunning", "running", progressing=True)
    first = derive_status("DataPipeline", {}, 1, Observation("dp-data", running), now=NOW)
    again = derive_status("DataPipeline", first, 1, Observation("dp-data", running), now=LATER)
    assert status_patch(first, again) == {}
    progressing = get_condition(again["conditions"], "Progressing")
    assert progressing is not None and progressing["lastTransitionTime"] == NOW


def test_validation_failure_is_failed_with_the_message() -> None:
    message = "TrainingJob ml/gpt: spec.workers.cpu: 'lots' is not a Kubernetes quantity"
    status = derive_status("TrainingJob", {}, 4, Observation(invalid=message), now=NOW)
    assert status["phase"] == "Failed" and status["message"] == message
    assert conditions(status)["Failed"] == ("True", "ValidationFailed")
    assert conditions(status)["Ready"] == ("False", "ValidationFailed")
    assert status["completionTime"] == NOW


def test_spec_lock_and_suspend_conditions() -> None:
    suspended = ChildState("Suspended", "Suspended", "RayJob gpt-train is suspended")
    locked = Observation("gpt-train", suspended, spec_locked="spec changed", suspend_requested=True)
    status = derive_status("TrainingJob", {}, 3, locked, now=NOW)
    assert status["phase"] == "Suspended"
    assert conditions(status)["Suspended"] == ("True", "Suspended")
    assert conditions(status)["SpecLocked"] == ("True", "SpecChangeIgnored")
    unlocked = derive_status("TrainingJob", status, 4, Observation("gpt-train", suspended), now=LATER)
    assert conditions(unlocked)["SpecLocked"] == ("False", "SpecMatchesWorkload")
    waiting = Observation(dependency=Dependency(False, "DataPipelineNotReady", "waiting"), suspend_requested=True)
    assert conditions(derive_status("TrainingJob", {}, 1, waiting, now=NOW))["Suspended"] == (
        "True",
        "SuspendRequested",
    )


def test_modeldeployment_status_carries_the_serving_fields() -> None:
    serving = ChildState("Ready", "Serving", "RayService gpt is serving")
    extra = {
        "url": "http://gpt-serve-svc.ml.svc.cluster.local:8000",
        "modelUri": "s3://m",
        "modelVersion": "v1",
        "traffic": [{"version": "v1", "modelUri": "s3://m", "percent": 100}],
    }
    model = Dependency(True, "ModelExported", "model: TrainingJob gpt exported s3://m")
    status = derive_status("ModelDeployment", {}, 1, Observation("gpt", serving, model, extra=extra), now=NOW)
    assert status["phase"] == "Ready" and status["url"].startswith("http://gpt-serve-svc")
    assert conditions(status)["Ready"] == ("True", "Serving")
    assert conditions(status)["ModelReady"] == ("True", "ModelExported")
    assert status["completionTime"] is None
    ModelDeploymentStatus.model_validate(status)


def test_datapipeline_status_validates_against_its_model() -> None:
    done = ChildState("Succeeded", "JobSucceeded", "done")
    status = derive_status("DataPipeline", {}, 1, Observation("dp-data", done, extra={"outputUri": "s3://o"}), now=NOW)
    DataPipelineStatus.model_validate(status)
    assert "DataReady" not in conditions(status)


INVALID = {"phase": "Failed", "observedGeneration": 1, "conditions": [{"type": "Failed", "reason": "ValidationFailed"}]}


@pytest.mark.parametrize(
    ("kind", "status", "generation", "settled"),
    [
        ("TrainingJob", {"phase": "Succeeded"}, 1, True),
        ("TrainingJob", {"phase": "Failed", "childName": "x", "conditions": []}, 2, True),
        ("TrainingJob", {"phase": "Running"}, 1, False),
        ("ModelDeployment", {"phase": "Failed"}, 1, False),
        (
            "TrainingJob",
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [{"type": "Failed", "reason": "ValidationFailed"}],
            },
            1,
            True,
        ),
        (
            "TrainingJob",
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [{"type": "Failed", "reason": "ValidationFailed"}],
            },
            2,
            False,
        ),
    ],
)
def test_finished_jobs_are_settled_except_a_fixed_invalid_spec(
    kind: str, status: dict[str, Any], generation: int, settled: bool
) -> None:
    assert is_settled(kind, status, generation) is settled


def test_status_patch_contains_only_changes_and_removes_cleared_fields() -> None:
    current = {"phase": "Failed", "completionTime": NOW, "retries": 0, "step": 10, "conditions": [{"type": "A"}]}
    desired = {"phase": "Pending", "completionTime": None, "retries": 1, "conditions": [{"type": "A"}]}
    assert status_patch(current, desired) == {"phase": "Pending", "completionTime": None, "retries": 1}
    assert (
        status_patch({"conditions": [{"type": "A"}, {"type": "B"}]}, {"conditions": [{"type": "B"}, {"type": "A"}]})
        == {}
    )


def test_the_spec_lock_is_judged_once_per_generation() -> None:
    spec = {"model": {"name": "gpt"}, "suspend": False}
    child = {"metadata": {"name": "gpt-train", "annotations": {ANNOTATION_SPEC_HASH: spec_hash(spec)}}}
    changed = {**spec, "model": {"name": "other"}}
    new_generation = {"metadata": {"generation": 2}, "spec": changed, "status": {"observedGeneration": 1}}
    message = spec_lock_message("TrainingJob", new_generation, child)
    assert message is not None and "generation 2" in message
    # A suspend change is no lock.
    suspended = {"metadata": {"generation": 2}, "spec": {**spec, "suspend": True}, "status": {"observedGeneration": 1}}
    assert spec_lock_message("TrainingJob", suspended, child) is None
    # Once derived for this generation, the recorded condition stands (True kept, absent stays absent).
    locked = {"type": "SpecLocked", "status": "True", "reason": "SpecChangeIgnored", "message": message}
    derived = {**new_generation, "status": {"observedGeneration": 2, "conditions": [locked]}}
    assert spec_lock_message("TrainingJob", derived, child) == message
    unlocked = {**new_generation, "status": {"observedGeneration": 2, "conditions": []}}
    assert spec_lock_message("TrainingJob", unlocked, child) is None
