"""Status transitions written the way the operator writes them, and the status files they share with the workloads."""

from __future__ import annotations

import pytest
from kubeforge import conditions as c
from kubeforge.api import DataPipelineStatus, ModelDeploymentStatus, TrainingJobStatus
from kubeforge.local import status as st
from kubeforge.status import Dependency, Observation, derive_status, rayjob_state, rayservice_state
from kubeforge_trainer.progress import FileStatusReporter

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"
MODELS = {
    "DataPipeline": DataPipelineStatus,
    "TrainingJob": TrainingJobStatus,
    "ModelDeployment": ModelDeploymentStatus,
}


def cond(status: dict, type_: str) -> dict:
    found = c.get_condition(status["conditions"], type_)
    assert found is not None, f"no {type_} condition in {status['conditions']}"
    return found


def valid(kind: str, status: dict) -> dict:
    """Every status the runner writes must pass the kind's status model (what the API server would accept)."""
    MODELS[kind].model_validate(status)
    return status


def test_job_runs_then_succeeds():
    running = valid("DataPipeline", st.started({}, "DataPipeline", 3, T0, "started"))
    assert running["phase"] == "Running"
    assert running["observedGeneration"] == 3
    assert running["startTime"] == T0
    assert cond(running, c.PROGRESSING)["status"] == "True"
    assert cond(running, c.READY)["status"] == "False"
    assert cond(running, c.PROGRESSING)["observedGeneration"] == 3
    done = valid("DataPipeline", st.succeeded({**running, "rowsIn": 10}, "DataPipeline", 3, T1, "completed"))
    assert done["phase"] == "Succeeded"
    assert done["completionTime"] == T1
    assert done["rowsIn"] == 10, "progress fields the workload wrote are kept"
    assert cond(done, c.READY)["status"] == "True"
    assert c.get_condition(done["conditions"], c.DATA_READY) is None, "DataReady belongs to the TrainingJob"
    assert cond(done, c.PROGRESSING)["status"] == "False"
    assert cond(done, c.PROGRESSING)["lastTransitionTime"] == T1
    assert cond(done, c.FAILED)["status"] == "False"
    assert cond(done, c.FAILED)["lastTransitionTime"] == T0, "an unchanged status keeps its transition time"
    assert st.is_up_to_date(done, 3)
    assert not st.is_up_to_date(done, 4)
    assert not st.is_up_to_date(running, 3)


def test_trainingjob_sets_data_ready_when_started():
    running = valid("TrainingJob", st.started({}, "TrainingJob", 1, T0, "started"))
    assert cond(running, c.DATA_READY)["status"] == "True"
    assert cond(running, c.DATA_READY)["reason"] == "DataPipelineSucceeded"
    done = valid("TrainingJob", st.succeeded(running, "TrainingJob", 1, T1, "completed"))
    assert cond(done, c.READY)["reason"] == "JobSucceeded"
    assert c.get_condition(done["conditions"], c.MODEL_READY) is None, "ModelReady belongs to the ModelDeployment"


def test_deployment_deploys_then_is_ready_then_stops_with_the_run():
    deploying = valid("ModelDeployment", st.started({}, "ModelDeployment", 1, T0, "deploying"))
    assert deploying["phase"] == "Deploying"
    assert cond(deploying, c.MODEL_READY)["status"] == "True"
    ready = valid("ModelDeployment", st.succeeded(deploying, "ModelDeployment", 1, T1, "serving"))
    assert ready["phase"] == "Ready"
    assert "completionTime" not in ready or ready["completionTime"] is None, "a service does not complete"
    assert cond(ready, c.READY)["reason"] == "Serving"
    gone = valid("ModelDeployment", st.stopped({**ready, "readyReplicas": 1}, 1, T2, "stopped"))
    assert gone["phase"] == "Suspended"
    assert gone["readyReplicas"] == 0
    assert cond(gone, c.READY)["status"] == "False"
    assert cond(gone, c.SUSPENDED)["reason"] == st.REASON_STOPPED
    assert cond(gone, c.MODEL_READY)["status"] == "True", "the model is still there"


def test_failure_and_interruption():
    running = st.started({}, "TrainingJob", 1, T0, "started")
    failed = valid("TrainingJob", st.failed(running, "TrainingJob", 1, T1, "boom"))
    assert failed["phase"] == "Failed"
    assert failed["message"] == "boom"
    assert cond(failed, c.FAILED)["status"] == "True"
    assert cond(failed, c.FAILED)["message"] == "boom"
    stopped = valid("TrainingJob", st.interrupted(running, "TrainingJob", 1, T1, "interrupted"))
    assert stopped["phase"] == "Suspended"
    assert cond(stopped, c.SUSPENDED)["reason"] == st.REASON_INTERRUPTED
    resumed = valid("TrainingJob", st.started(stopped, "TrainingJob", 1, T2, "resuming"))
    assert resumed["phase"] == "Running"
    assert cond(resumed, c.SUSPENDED)["status"] == "False"
    assert resumed["completionTime"] is None


def test_waiting_for_a_failed_dependency():
    waiting = valid("TrainingJob", st.waiting({}, "TrainingJob", 1, T0, "waits for DataPipeline/x", True))
    assert waiting["phase"] == "Pending"
    assert cond(waiting, c.DATA_READY)["status"] == "False"
    assert cond(waiting, c.DATA_READY)["reason"] == "DataPipelineFailed"
    md = valid("ModelDeployment", st.waiting({}, "ModelDeployment", 1, T0, "waits", False))
    assert cond(md, c.MODEL_READY)["reason"] == "TrainingJobNotReady"


@pytest.mark.parametrize("kind", ["TrainingJob", "ModelDeployment"])
def test_the_local_runner_and_the_operator_write_the_same_status_for_the_same_child_states(kind):
    """One status machine: a dependency that is not ready, then ready with the workload running, then failed, then
    retried and succeeded — through the local transitions and through the operator's derivation from its children
    (rayjob_state / rayservice_state, as the handlers build their Observations)."""
    dep, not_ready_reason, _, ready_reason = st.DEPENDENCY_REASONS[kind]
    waiting_message = f"waiting for {dep} x (Running)"
    if kind == "TrainingJob":
        running_child = rayjob_state(rayjob("Running", "RUNNING", T1))
        failed_child = rayjob_state(rayjob("Complete", "FAILED", T1, message="worker OOM"))
        done_child = rayjob_state(rayjob("Complete", "SUCCEEDED", T1))
        local_done = "RayJob x succeeded"
    else:
        running_child = rayservice_state({"metadata": {"name": "x"}, "status": {}})
        failed_child = None  # a RayService does not fail and retry as a job does
        done_child = rayservice_state({"metadata": {"name": "x"}, "status": {"serviceStatus": "Running"}})
        local_done = "RayService x is serving"

    ready = Dependency(True, ready_reason, f"{dep} ready")
    operator: list[dict] = []
    current: dict = {}
    sequence = [(Dependency(False, not_ready_reason, waiting_message), None, T0), (ready, running_child, T1)]
    if failed_child is not None:
        sequence.append((ready, failed_child, T2))
    sequence.append((ready, done_child, T2))
    for dependency, child, now in sequence:
        current = {**current, **derive_status(kind, current, 1, Observation(child=child, dependency=dependency), now)}
        operator.append(current)

    local = [st.waiting({}, kind, 1, T0, waiting_message, failed_dependency=False)]
    local.append(st.started(local[-1], kind, 1, T1, running_child.message))
    if failed_child is not None:
        local.append(st.failed(local[-1], kind, 1, T2, failed_child.message))
    local.append(st.succeeded(local[-1], kind, 1, T2, local_done))

    def comparable(status: dict) -> dict:
        # childName and the times of the children exist only in a cluster; phases, reasons, messages, the
        # conditions and the generation are what must agree.
        return {
            "phase": status["phase"],
            "message": status["message"],
            "observedGeneration": status["observedGeneration"],
            "conditions": sorted(
                (x["type"], x["status"], x["reason"], x["lastTransitionTime"]) for x in status["conditions"]
            ),
        }

    assert [comparable(s) for s in local] == [comparable(s) for s in operator]


def rayjob(deployment: str, job: str, start: str, message: str = "") -> dict:
    status = {"jobDeploymentStatus": deployment, "jobStatus": job, "startTime": start, "message": message}
    return {"metadata": {"name": "x"}, "status": status}


def test_store_shares_the_file_with_the_workload_reporter(tmp_path):
    store = st.StatusStore(tmp_path)
    assert store.get("TrainingJob", "gpt") == {}
    store.put("TrainingJob", "gpt", st.started({}, "TrainingJob", 1, T0, "started"))
    reporter = FileStatusReporter("TrainingJob", "gpt", store.directory, interval=0)
    reporter.report(step=5, totalSteps=10, loss=2.5)
    reporter.close()
    merged = store.get("TrainingJob", "gpt")
    assert merged["phase"] == "Running" and merged["step"] == 5 and merged["loss"] == 2.5
    done = store.put("TrainingJob", "gpt", st.succeeded(merged, "TrainingJob", 1, T1, "completed"))
    assert done["step"] == 5 and done["phase"] == "Succeeded"
    store.put("DataPipeline", "corpus", {"phase": "Running"})
    store.put("ModelDeployment", "a", {"phase": "Ready"})
    assert [(k, n) for k, n, _ in store.entries()] == [
        ("DataPipeline", "corpus"),
        ("TrainingJob", "gpt"),
        ("ModelDeployment", "a"),
    ]
    store.reset("TrainingJob", "gpt")
    assert store.get("TrainingJob", "gpt") == {}
