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

Status = dict[str, Any]

# Reasons the local runner sets (CamelCase, as in metav1.Condition).
REASON_WAITING_FOR_DATA = "WaitingForDataPipeline"
REASON_WAITING_FOR_MODEL = "WaitingForModel"
REASON_DEPENDENCY_FAILED = "DependencyFailed"
REASON_RUNNING = "Running"
REASON_DEPLOYING = "Deploying"
REASON_SUCCEEDED = "Succeeded"
REASON_SERVING = "Serving"
REASON_WORKLOAD_FAILED = "WorkloadFailed"
REASON_INTERRUPTED = "Interrupted"
REASON_STOPPED = "LocalRunEnded"
REASON_DATA_WRITTEN = "DatasetWritten"
REASON_MODEL_EXPORTED = "ModelExported"
REASON_MODEL_AVAILABLE = "ModelAvailable"

# The condition that says a kind's output (or input, for a ModelDeployment) is there.
OUTPUT_CONDITION = {"DataPipeline": c.DATA_READY, "TrainingJob": c.MODEL_READY}
INPUT_CONDITION = {"TrainingJob": c.DATA_READY, "ModelDeployment": c.MODEL_READY}


def _with(status: Status, generation: int, now: str, phase: str, message: str, updates: list[tuple]) -> Status:
    conds = list(status.get("conditions", []))
    for type_, value, reason in updates:
        conds = c.set_condition(conds, type_, value, reason, message, generation=generation, now=now)
    return {**status, "phase": phase, "observedGeneration": generation, "conditions": conds, "message": message}


def waiting(status: Status, kind: str, generation: int, now: str, message: str, failed_dependency: bool) -> Status:
    """Pending: the resource waits for (or cannot run because of) the resource it references."""
    reason = (
        REASON_DEPENDENCY_FAILED
        if failed_dependency
        else (REASON_WAITING_FOR_DATA if kind == "TrainingJob" else REASON_WAITING_FOR_MODEL)
    )
    updates = [(c.PROGRESSING, False, reason), (c.READY, False, reason)]
    if kind in INPUT_CONDITION:
        updates.append((INPUT_CONDITION[kind], False, reason))
    return _with(status, generation, now, "Pending", message, updates)


def started(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Running (a ModelDeployment: Deploying): the workload has been started."""
    serving = kind == "ModelDeployment"
    reason = REASON_DEPLOYING if serving else REASON_RUNNING
    updates = [(c.PROGRESSING, True, reason), (c.READY, False, reason), (c.FAILED, False, reason)]
    if kind in INPUT_CONDITION:
        updates.append((INPUT_CONDITION[kind], True, REASON_MODEL_AVAILABLE if serving else REASON_DATA_WRITTEN))
    if status.get("phase") == "Suspended":
        updates.append((c.SUSPENDED, False, "Resumed"))
    out = _with(status, generation, now, "Deploying" if serving else "Running", message, updates)
    out["startTime"] = now
    out["completionTime"] = None
    return out


def succeeded(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Succeeded (a ModelDeployment: Ready, serving): the workload's output is there."""
    serving = kind == "ModelDeployment"
    reason = REASON_SERVING if serving else REASON_SUCCEEDED
    updates = [(c.PROGRESSING, False, reason), (c.READY, True, reason), (c.FAILED, False, reason)]
    if kind in OUTPUT_CONDITION:
        output_reason = REASON_DATA_WRITTEN if kind == "DataPipeline" else REASON_MODEL_EXPORTED
        updates.append((OUTPUT_CONDITION[kind], True, output_reason))
    out = _with(status, generation, now, "Ready" if serving else "Succeeded", message, updates)
    if not serving:
        out["completionTime"] = now
    return out


def failed(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Failed: the workload raised and has no retries left."""
    updates = [(c.PROGRESSING, False, REASON_WORKLOAD_FAILED), (c.READY, False, REASON_WORKLOAD_FAILED)]
    updates.append((c.FAILED, True, REASON_WORKLOAD_FAILED))
    return _with(status, generation, now, "Failed", message, updates)


def interrupted(status: Status, kind: str, generation: int, now: str, message: str) -> Status:
    """Suspended: the user stopped the run (Ctrl-C); the next run resumes it."""
    updates = [
        (c.PROGRESSING, False, REASON_INTERRUPTED),
        (c.READY, False, REASON_INTERRUPTED),
        (c.SUSPENDED, True, REASON_INTERRUPTED),
    ]
    return _with(status, generation, now, "Suspended", message, updates)


def stopped(status: Status, generation: int, now: str, message: str) -> Status:
    """Suspended: a ModelDeployment whose local endpoint went away with the run that served it."""
    updates = [(c.READY, False, REASON_STOPPED), (c.SUSPENDED, True, REASON_STOPPED)]
    out = _with(status, generation, now, "Suspended", message, updates)
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
