"""Status as the operator writes it — phase, observedGeneration, conditions, start and completion times — as pure
transitions, and the local status files they go to (`<state dir>/status/<Kind>/<name>.json`, the same files the
workloads' FileStatusReporter writes progress into).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubeforge_trainer.progress import read_status_file, write_status_file

from .. import conditions as c
from ..constants import KINDS
from ..status import ChildState, Dependency, Observation, derive_status

Status = dict[str, Any]

# What a resource waits for, and the operator's reasons for it (handlers/trainingjob.py, handlers/modeldeployment.py):
# kind -> (dependency kind, not ready, failed, ready).
DEPENDENCY_REASONS = {
    "TrainingJob": ("DataPipeline", "DataPipelineNotReady", "DataPipelineFailed", "DataPipelineSucceeded"),
    "ModelDeployment": ("TrainingJob", "TrainingJobNotReady", "TrainingJobFailed", "ModelExported"),
}

# Local-only states, layered on the operator's Suspended: a cluster has no Ctrl-C, and its endpoints outlive a run.
REASON_INTERRUPTED = "Interrupted"
REASON_STOPPED = "LocalRunEnded"


def _derive(
    status: Status,
    kind: str,
    generation: int,
    now: str,
    child: ChildState | None = None,
    dependency: Dependency | None = None,
) -> Status:
    """status with the operator-owned fields derived by the operator's own derive_status (one status machine: a
    local run and a cluster write the same phases, reasons and conditions for the same child states)."""
    observation = Observation(child=child, dependency=dependency, retries=int(status.get("retries") or 0))
    derived = derive_status(kind, status, generation, observation, now)
    if derived.get("childName") is None:
        derived.pop("childName")  # no child object locally
    return {**status, **derived}


def waiting(status: Status, kind: str, generation: int, now: str, message: str, failed_dependency: bool) -> Status:
    """Pending: the resource waits for (or cannot run because of) the resource it references."""
    _, not_ready, failed_reason, _ = DEPENDENCY_REASONS[kind]
    dependency = Dependency(False, failed_reason if failed_dependency else not_ready, message)
    return _derive(status, kind, generation, now, dependency=dependency)


def started(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Running (a ModelDeployment: Deploying): the workload has been started (again: a new start time)."""
    fresh = {k: v for k, v in status.items() if k not in ("startTime", "completionTime")}
    if kind == "ModelDeployment":
        child = ChildState("Deploying", "Deploying", message, progressing=True, start_time=now)
    else:
        child = ChildState("Running", "JobRunning", message, progressing=True, start_time=now)
    dependency = None
    if kind in DEPENDENCY_REASONS:
        needed, _, _, ready = DEPENDENCY_REASONS[kind]
        dependency = Dependency(True, ready, f"{needed} ready")
    return _derive(fresh, kind, generation, now, child, dependency)


def succeeded(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Succeeded (a ModelDeployment: Ready, serving): the workload's output is there."""
    serving = kind == "ModelDeployment"
    child = ChildState("Ready", "Serving", message) if serving else ChildState("Succeeded", "JobSucceeded", message)
    return _derive(status, kind, generation, now, child)


def failed(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Failed: the workload raised and has no retries left (or no retry can fix it)."""
    return _derive(status, kind, generation, now, ChildState("Failed", "JobFailed", message))


def _suspended(status: Status, kind: str, generation: int, now: str, reason: str, message: str) -> Status:
    out = _derive(status, kind, generation, now, ChildState("Suspended", reason, message))
    # The derivation words Suspended for spec.suspend; say why the local run suspended it instead.
    out["conditions"] = c.set_condition(out["conditions"], c.SUSPENDED, True, reason, message, generation, now)
    return out


def interrupted(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Suspended: the user stopped the run (Ctrl-C); the next run resumes it."""
    return _suspended(status, kind, generation, now, REASON_INTERRUPTED, message)


def stopped(status: Status, generation: int, now: str, message: str) -> Status:
    """Suspended: a ModelDeployment whose local endpoint went away with the run that served it."""
    out = _suspended(status, "ModelDeployment", generation, now, REASON_STOPPED, message)
    out["readyReplicas"] = 0
    return out


def is_up_to_date(status: Status, generation: int) -> bool:
    """Whether a job already succeeded at this generation (then running it again would redo finished work)."""
    return status.get("phase") == "Succeeded" and status.get("observedGeneration") == generation


class StatusStore:
    """`<state dir>/status/<Kind>/<name>.json`, read and written with kubeforge_trainer.progress's helpers."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "status"

    def path(self, kind: str, name: str) -> Path:
        """The status file of kind/name."""
        return self.directory / kind / f"{name}.json"

    def get(self, kind: str, name: str) -> Status:
        """The status of kind/name ({} when there is none)."""
        return read_status_file(self.path(kind, name))

    def put(self, kind: str, name: str, status: Status) -> Status:
        """Merge status into the file (the workload's progress fields written meanwhile are kept)."""
        return write_status_file(self.path(kind, name), status)

    def reset(self, kind: str, name: str) -> None:
        """Forget the status of kind/name (a changed spec starts from scratch, as a new generation does)."""
        self.path(kind, name).unlink(missing_ok=True)

    def entries(self) -> Iterator[tuple[str, str, Status]]:
        """(kind, name, status) of every status file, kinds in pipeline order, names sorted."""
        for kind in KINDS:
            for path in sorted((self.directory / kind).glob("*.json")):
                yield kind, path.stem, read_status_file(path)
