"""Status of DataPipelines, TrainingJobs and ModelDeployments, derived from their children (pure functions).

KubeRay reports a RayJob through ``status.jobDeploymentStatus`` (the cluster and submission: Initializing,
Running, Complete, Failed, Suspending, Suspended, Retrying, ...) and ``status.jobStatus`` (the Ray job: PENDING,
RUNNING, SUCCEEDED, FAILED, STOPPED), and a RayService through its ``Ready`` / ``UpgradeInProgress`` conditions
and the Serve application statuses (RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...). This module maps both to
our ``phase`` and standard conditions. The operator owns phase, conditions, observedGeneration, message, times,
childName and retries; workloads write progress fields only, and nothing here touches those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .conditions import (
    DATA_READY,
    FAILED,
    MODEL_READY,
    PROGRESSING,
    READY,
    REASON_VALIDATION_FAILED,
    SPEC_LOCKED,
    SUSPENDED,
    get_condition,
    now_rfc3339,
    set_condition,
)
from .failures import cause_line, is_permanent_text

JOB_KINDS = frozenset({"DataPipeline", "TrainingJob"})
TERMINAL_JOB_PHASES = frozenset({"Succeeded", "Failed"})
DEPENDENCY_CONDITION = {"TrainingJob": DATA_READY, "ModelDeployment": MODEL_READY}

# Status fields the operator writes; everything else in status belongs to the workload.
OPERATOR_FIELDS = (
    "phase",
    "observedGeneration",
    "conditions",
    "message",
    "startTime",
    "completionTime",
    "childName",
    "retries",
)


@dataclass(frozen=True)
class ChildState:
    """What a RayJob or RayService says, in our words."""

    phase: str
    reason: str
    message: str
    progressing: bool = False
    retryable: bool = True
    start_time: str | None = None
    end_time: str | None = None


@dataclass(frozen=True)
class Dependency:
    """Whether the resource a TrainingJob or ModelDeployment needs is ready, and why not."""

    ready: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """Everything the status of one resource is derived from."""

    child_name: str | None = None
    child: ChildState | None = None
    dependency: Dependency | None = None
    invalid: str | None = None
    spec_locked: str | None = None
    suspend_requested: bool = False
    retries: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def rayjob_state(rayjob: Mapping[str, Any]) -> ChildState:
    """Map a RayJob's jobDeploymentStatus / jobStatus to our phase."""
    status = rayjob.get("status") or {}
    name = rayjob.get("metadata", {}).get("name", "?")
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    detail = status.get("message") or ""
    times = {"start_time": status.get("startTime"), "end_time": status.get("endTime")}
    if job == "SUCCEEDED" or (deployment == "Complete" and not job):
        return ChildState("Succeeded", "JobSucceeded", f"RayJob {name} succeeded", **times)
    if job == "FAILED":
        # failurePolicy retries only what may heal; the workload's own last line names a permanent cause.
        message = _join(f"Ray job of RayJob {name} failed", cause_line(detail))
        return ChildState("Failed", "JobFailed", message, retryable=not is_permanent_text(detail), **times)
    if job == "STOPPED":
        message = _join(f"Ray job of RayJob {name} was stopped", detail)
        return ChildState("Failed", "JobStopped", message, retryable=False, **times)
    if deployment in ("Failed", "Complete"):
        reason = status.get("reason") or "JobDeploymentFailed"
        return ChildState("Failed", reason, _join(f"RayJob {name} failed ({reason})", detail), **times)
    if deployment in ("Suspending", "Suspended"):
        return ChildState("Suspended", deployment, f"RayJob {name} is {deployment.lower()}", **times)
    if deployment == "Running":
        reason = "JobPending" if job == "PENDING" else "JobRunning"
        return ChildState("Running", reason, f"RayJob {name} is running", progressing=True, **times)
    if deployment == "Retrying":
        return ChildState("Pending", "Retrying", f"KubeRay is retrying RayJob {name}", progressing=True, **times)
    step = deployment or "created"
    return ChildState("Pending", "ClusterStarting", f"RayJob {name}: {step}", progressing=True, **times)


def rayservice_state(rayservice: Mapping[str, Any]) -> ChildState:
    """Map a RayService's conditions and Serve application statuses to our phase."""
    status = rayservice.get("status") or {}
    name = rayservice.get("metadata", {}).get("name", "?")
    if (rayservice.get("spec") or {}).get("suspend"):
        return ChildState("Suspended", "Suspended", f"RayService {name} is suspended")
    conditions = status.get("conditions") or []
    ready = _is_true(conditions, "Ready") or status.get("serviceStatus") == "Running"
    generation = rayservice.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    rolling_out = _is_true(conditions, "UpgradeInProgress") or (
        generation is not None and observed is not None and observed < generation
    )
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    broken = {
        app: app_status
        for app, app_status in sorted(apps.items())
        if app_status.get("status") in ("DEPLOY_FAILED", "UNHEALTHY")
    }
    if broken:
        app, app_status = next(iter(broken.items()))
        kind = app_status.get("status")
        reason = "DeployFailed" if kind == "DEPLOY_FAILED" else "ApplicationUnhealthy"
        message = _join(f"Serve application {app} of RayService {name} is {kind}", app_status.get("message") or "")
        return ChildState("Degraded" if ready else "Failed", reason, message, progressing=rolling_out)
    if ready:
        reason = "RollingOut" if rolling_out else "Serving"
        return ChildState("Ready", reason, f"RayService {name} is serving", progressing=rolling_out)
    return ChildState("Deploying", "Deploying", f"RayService {name}: waiting for the Serve application", True)


def derive_status(
    kind: str,
    current: Mapping[str, Any],
    generation: int | None,
    observation: Observation,
    now: str | None = None,
) -> dict[str, Any]:
    """The operator-owned status fields of a resource, given its current status and what was observed."""
    now = now or now_rfc3339()
    obs = observation
    child = obs.child
    conditions: list[dict[str, Any]] = list(current.get("conditions") or [])

    def cond(type_: str, value: bool, reason: str, message: str = "") -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, value, reason, message, generation, now)

    if obs.invalid:
        phase, message = "Failed", obs.invalid
        cond(READY, False, REASON_VALIDATION_FAILED, message)
        cond(PROGRESSING, False, REASON_VALIDATION_FAILED)
        cond(FAILED, True, REASON_VALIDATION_FAILED, message)
    elif child is None:
        waiting = obs.dependency if obs.dependency and not obs.dependency.ready else None
        reason = waiting.reason if waiting else "Creating"
        phase, message = "Pending", waiting.message if waiting else f"creating {obs.child_name or 'the workload'}"
        cond(READY, False, reason, message)
        cond(PROGRESSING, waiting is None, reason, message)
        cond(FAILED, False, "NoFailure")
    else:
        phase, message = child.phase, child.message
        succeeded = phase == "Succeeded" if kind in JOB_KINDS else phase == "Ready"
        cond(READY, succeeded, child.reason, message)
        cond(PROGRESSING, child.progressing, child.reason, message)
        cond(
            FAILED,
            phase == "Failed",
            child.reason if phase == "Failed" else "NoFailure",
            message if phase == "Failed" else "",
        )
    suspended = (child is not None and child.phase == "Suspended") or (child is None and obs.suspend_requested)
    if suspended:
        cond(SUSPENDED, True, "Suspended" if child else "SuspendRequested", "spec.suspend is true")
    else:
        cond(SUSPENDED, False, "NotSuspended")
    dependency_type = DEPENDENCY_CONDITION.get(kind)
    if dependency_type and obs.dependency is not None:
        cond(dependency_type, obs.dependency.ready, obs.dependency.reason, obs.dependency.message)
    if obs.spec_locked:
        cond(SPEC_LOCKED, True, "SpecChangeIgnored", obs.spec_locked)
    elif get_condition(conditions, SPEC_LOCKED) is not None:
        cond(SPEC_LOCKED, False, "SpecMatchesWorkload", "the spec matches the running workload")

    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conditions,
        "message": message,
        "childName": obs.child_name if child is not None else current.get("childName"),
        "retries": obs.retries,
        "startTime": current.get("startTime") or (child.start_time or now if child is not None else None),
        "completionTime": None,
    }
    if kind in JOB_KINDS and phase in TERMINAL_JOB_PHASES:
        status["completionTime"] = current.get("completionTime") or (child.end_time if child else None) or now
    status.update(obs.extra)
    return status


def is_settled(kind: str, status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether a job has finished for good: a restart, a resync or a child event must not touch it again.

    A job that failed validation is settled only for the generation that failed: a fixed spec may still start."""
    if kind not in JOB_KINDS or status.get("phase") not in TERMINAL_JOB_PHASES:
        return False
    failed = get_condition(status.get("conditions") or [], FAILED) or {}
    if failed.get("reason") == REASON_VALIDATION_FAILED and not status.get("childName"):
        return generation is None or (status.get("observedGeneration") or 0) >= generation
    return True


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch taking current to desired; None removes a field. Empty when nothing changes."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if key == "conditions":
            if _by_type(old or []) != _by_type(value or []):
                patch[key] = value
        elif value is None:
            if old is not None:
                patch[key] = None
        elif old != value:
            patch[key] = value
    return patch


def _by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in conditions}


def _is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def _join(summary: str, detail: str) -> str:
    return f"{summary}: {detail}" if detail else summary
