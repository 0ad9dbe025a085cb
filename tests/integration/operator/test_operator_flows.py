"""The real operator (kopf over real HTTP) against the Kubernetes API emulator: the quickstart end to end, failure and
retry, suspend, spec changes, bad input, ordering, rollout, deletion, restarts. The tests play the user (creating and
editing resources), KubeRay (patching the children's status) and the workloads (reporting progress)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import yaml
from kubeforge.handlers.kube import USER_AGENT
from kubeforge.metrics import RECONCILES, RETRIES
from kubeforge_trainer.progress import KubeStatusReporter
from shipped import quickstart_manifest
from support.cluster import NAMESPACE, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


READY_CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "NonZeroServeEndpoints",
    "message": "Number of serve endpoints is greater than 0",
    "lastTransitionTime": "2026-11-22T10:00:00Z",
}


def runtime_env(rayjob: dict[str, Any]) -> dict[str, str]:
    """The env_vars of a RayJob."""
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]


def serve_args(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The build_app args of a RayService's one application."""
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]


def training_job(name: str = "gpt", **spec: Any) -> dict[str, Any]:
    """The quickstart TrainingJob renamed, reading data from a URI (no DataPipeline), with spec overrides."""
    manifest = quickstart_manifest("TrainingJob")
    manifest["metadata"]["name"] = name
    manifest["spec"]["dataRef"] = {"uri": "s3://corpus/v1"}
    manifest["spec"].update(spec)
    return manifest


def by_operator(request: Any) -> bool:
    """kmock filter: requests the operator sent."""
    return request.headers.get("User-Agent", "").startswith(USER_AGENT)


def counter(metric: Any, *labels: str) -> float:
    """Current value of a labelled prometheus counter."""
    return metric.labels(*labels)._value.get()


def test_quickstart_runs_in_order_from_data_to_serving(cluster: Cluster) -> None:
    for kind in ("DataPipeline", "TrainingJob", "ModelDeployment"):
        cluster.apply(quickstart_manifest(kind))

    data_job = cluster.wait_child("RayJob", "quickstart-corpus-data")
    assert data_job["spec"]["entrypoint"] == "python -m kubeforge_trainer data"
    assert data_job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubeforge"
    assert data_job["metadata"]["labels"]["kubeforge.dev/datapipeline"] == "quickstart-corpus"
    [owner] = data_job["metadata"]["ownerReferences"]
    pipeline = cluster.get("DataPipeline", "quickstart-corpus")
    assert pipeline is not None
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "DataPipeline",
        "quickstart-corpus",
        pipeline["metadata"]["uid"],
    )
    assert owner["controller"] is True and data_job["spec"]["shutdownAfterJobFinishes"] is True

    # The TrainingJob and the ModelDeployment wait, saying why.
    cluster.wait_status("TrainingJob", "quickstart-gpt", phase="Pending")
    data_ready = cluster.wait_for(
        "DataReady condition", lambda: cluster.condition("TrainingJob", "quickstart-gpt", "DataReady")
    )
    assert data_ready["status"] == "False" and data_ready["reason"] == "DataPipelineNotReady"
    cluster.wait_status("ModelDeployment", "quickstart-gpt", phase="Pending")
    model_ready = cluster.condition("ModelDeployment", "quickstart-gpt", "ModelReady")
    assert model_ready["status"] == "False" and model_ready["reason"] == "TrainingJobNotReady"
    assert cluster.get("RayJob", "quickstart-gpt-train") is None

    # KubeRay runs the data job; the data step reports its progress and output.
    cluster.kuberay("RayJob", "quickstart-corpus-data", jobDeploymentStatus="Initializing")
    cluster.kuberay("RayJob", "quickstart-corpus-data", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("DataPipeline", "quickstart-corpus", phase="Running")
    cluster.patch_status("DataPipeline", "quickstart-corpus", {"rowsIn": 6000, "outputUri": "s3://bucket/corpus"})
    cluster.kuberay(
        "RayJob",
        "quickstart-corpus-data",
        jobDeploymentStatus="Complete",
        jobStatus="SUCCEEDED",
        endTime="2026-11-22T10:00:00Z",
    )
    done = cluster.wait_status("DataPipeline", "quickstart-corpus", phase="Succeeded")
    assert done["completionTime"] == "2026-11-22T10:00:00Z" and done["rowsIn"] == 6000

    # The TrainingJob starts by itself, on the pipeline's output, with its worker group sized from spec.workers. The
    # input is the pipeline's spec.output.uri, where the data step writes: never the status's outputUri, which any
    # workload can write (the trust boundary in docs/operator.md).
    train_job = cluster.wait_child("RayJob", "quickstart-gpt-train")
    env = runtime_env(train_job)
    assert env["KUBEFORGE_DATA_URI"] == "runs/quickstart/data"
    assert json.loads(env["KUBEFORGE_RESOURCE"])["metadata"]["name"] == "quickstart-gpt"
    workers = train_job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 2
    data_ready = cluster.wait_for(
        "DataReady=True",
        lambda: cluster.condition("TrainingJob", "quickstart-gpt", "DataReady").get("status") == "True",
    )
    cluster.kuberay("RayJob", "quickstart-gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "quickstart-gpt", phase="Running")
    # The workload reports a modelUri elsewhere; the operator serves where the spec says the model is exported.
    cluster.patch_status("TrainingJob", "quickstart-gpt", {"modelUri": "s3://elsewhere/model", "modelVersion": "v7"})
    cluster.kuberay("RayJob", "quickstart-gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_status("TrainingJob", "quickstart-gpt", phase="Succeeded")
    assert cluster.condition("TrainingJob", "quickstart-gpt", "Ready")["status"] == "True"

    # The ModelDeployment serves the exported model through a RayService.
    service = cluster.wait_child("RayService", "quickstart-gpt")
    args = serve_args(service)
    assert (args["modelUri"], args["modelVersion"]) == ("runs/quickstart/checkpoints/model", "v7")
    assert args["resource"]["metadata"]["name"] == "quickstart-gpt"
    cluster.wait_status("ModelDeployment", "quickstart-gpt", phase="Deploying")
    cluster.kuberay(
        "RayService",
        "quickstart-gpt",
        conditions=[READY_CONDITION],
        activeServiceStatus={"applicationStatuses": {"quickstart-gpt": {"status": "RUNNING"}}},
    )
    serving = cluster.wait_status("ModelDeployment", "quickstart-gpt", phase="Ready")
    assert serving["url"] == f"http://quickstart-gpt-serve-svc.{NAMESPACE}.svc.cluster.local:8000"
    assert serving["traffic"] == [{"version": "v7", "modelUri": "runs/quickstart/checkpoints/model", "percent": 100}]
    assert serving["observedGeneration"] == 1

    # One Kubernetes Event per phase transition, and no other.
    def reasons() -> list[str]:
        return [reason for _, reason, _ in cluster.events("TrainingJob", "quickstart-gpt")]

    expected = ["Pending", "Started", "Completed"]
    cluster.wait_for(f"Events {expected}", lambda: sorted(reasons()) == sorted(expected))
    pending = next(e for e in cluster.events("TrainingJob", "quickstart-gpt") if e[1] == "Pending")
    assert pending == ("Normal", "Pending", "waiting for DataPipeline quickstart-corpus (Pending)")


def test_failed_training_is_retried_from_its_checkpoint_then_fails_for_good(cluster: Cluster) -> None:
    retries_before = counter(RETRIES, "TrainingJob")
    manifest = training_job(failurePolicy={"maxRetries": 1})
    manifest["spec"]["checkpoint"]["resume"] = False
    cluster.apply(manifest)
    first = cluster.wait_child("RayJob", "gpt-train")
    assert json.loads(runtime_env(first)["KUBEFORGE_RESOURCE"])["spec"]["checkpoint"]["resume"] is False
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    cluster.patch_status("TrainingJob", "gpt", {"step": 120, "latestCheckpoint": "s3://ckpt/step-100"})
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="FAILED", message="worker OOM")

    retry = cluster.wait_child("RayJob", "gpt-train-r1")
    assert retry["metadata"]["annotations"]["kubeforge.dev/attempt"] == "1"
    assert json.loads(runtime_env(retry)["KUBEFORGE_RESOURCE"])["spec"]["checkpoint"]["resume"] is True
    status = cluster.wait_status("TrainingJob", "gpt", retries=1, childName="gpt-train-r1")
    assert status["phase"] == "Pending" and status["step"] == 120
    assert cluster.condition("TrainingJob", "gpt", "Failed")["status"] == "False"
    # Counted once the operator has the answer to its status write (the watch may show the write first).
    cluster.wait_for("the retry counted", lambda: counter(RETRIES, "TrainingJob") == retries_before + 1)

    cluster.kuberay("RayJob", "gpt-train-r1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    cluster.kuberay("RayJob", "gpt-train-r1", jobDeploymentStatus="Complete", jobStatus="FAILED", message="OOM again")
    failed = cluster.wait_status("TrainingJob", "gpt", phase="Failed")
    assert "OOM again" in failed["message"] and failed["retries"] == 1 and failed["completionTime"]
    assert cluster.condition("TrainingJob", "gpt", "Failed")["reason"] == "JobFailed"
    cluster.wait_for(
        "Warning Events Retrying and Failed",
        lambda: (
            {("Warning", "Retrying"), ("Warning", "Failed")}
            <= {(t, r) for t, r, _ in cluster.events("TrainingJob", "gpt")}
        ),
    )

    # A restart (initial listing, child events) never re-runs a finished job, nor does KubeRay touching its RayJob.
    cluster.start_operator()
    cluster.kuberay("RayJob", "gpt-train-r1", jobDeploymentStatus="Complete", jobStatus="FAILED", message="touched")
    cluster.apply(training_job("other"))  # proof the restarted operator handles events past the touched RayJob's
    cluster.wait_status("TrainingJob", "other", phase="Pending", childName="other-train")
    assert cluster.names("RayJob") == ["gpt-train", "gpt-train-r1", "other-train"]
    assert cluster.get("TrainingJob", "gpt")["status"] == failed


def test_finished_jobs_stay_finished_across_an_operator_restart(cluster: Cluster) -> None:
    cluster.apply(training_job())
    cluster.wait_child("RayJob", "gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    done = cluster.wait_status("TrainingJob", "gpt", phase="Succeeded")
    # KubeRay may delete the RayJob's cluster (and someone the RayJob): the job stays Succeeded.
    cluster.stop_operator()
    cluster.delete("RayJob", "gpt-train")
    cluster.start_operator()
    cluster.wait_for("the restarted operator to resume", lambda: cluster.get("TrainingJob", "gpt"))
    cluster.apply(training_job("other"))  # proof the new operator works before checking nothing else happened
    cluster.wait_child("RayJob", "other-train")
    assert cluster.get("RayJob", "gpt-train") is None
    assert cluster.get("TrainingJob", "gpt")["status"] == done


def test_a_rayjob_leaving_the_watch_is_read_before_it_counts_as_deleted(cluster: Cluster) -> None:
    cluster.apply(training_job())
    cluster.wait_child("RayJob", "gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    # Someone strips our label: the informer's watch (label selector) reports the RayJob gone, but it is there.
    cluster.patch("RayJob", "gpt-train", {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}})
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    # No watch event comes any more; the safety-net resync reads it and follows it.
    cluster.wait_status("TrainingJob", "gpt", phase="Succeeded")
    assert cluster.condition("TrainingJob", "gpt", "Failed")["status"] == "False"
    assert cluster.names("RayJob") == ["gpt-train"]


def test_a_rayjob_deleted_while_running_fails_the_job_or_starts_a_retry(cluster: Cluster) -> None:
    cluster.apply(training_job(failurePolicy={"maxRetries": 0}))
    cluster.apply(training_job("retried", failurePolicy={"maxRetries": 1}))
    for name in ("gpt", "retried"):
        cluster.wait_child("RayJob", f"{name}-train")
        cluster.kuberay("RayJob", f"{name}-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
        cluster.wait_status("TrainingJob", name, phase="Running")
        cluster.delete("RayJob", f"{name}-train")
    failed = cluster.wait_status("TrainingJob", "gpt", phase="Failed")
    assert failed["message"] == "RayJob gpt-train was deleted before the job finished"
    assert cluster.condition("TrainingJob", "gpt", "Failed")["reason"] == "RayJobDeleted"
    # Never a silent re-run: without retries the job stays failed; with one, a new attempt is built from the spec.
    retry = cluster.wait_child("RayJob", "retried-train-r1")
    assert retry["metadata"]["annotations"]["kubeforge.dev/attempt"] == "1"
    cluster.wait_status("TrainingJob", "retried", phase="Pending", retries=1, childName="retried-train-r1")
    assert sorted(cluster.names("RayJob")) == ["retried-train-r1"]


def test_suspend_and_resume_pass_through_to_the_rayjob(cluster: Cluster) -> None:
    cluster.apply(training_job(queueName="team-a"))
    rayjob = cluster.wait_child("RayJob", "gpt-train")
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert rayjob["spec"]["suspend"] is False
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")

    cluster.patch("TrainingJob", "gpt", {"spec": {"suspend": True}})
    cluster.wait_for("RayJob suspended", lambda: cluster.get("RayJob", "gpt-train")["spec"]["suspend"] is True)
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Suspended")
    cluster.wait_status("TrainingJob", "gpt", phase="Suspended")
    assert cluster.condition("TrainingJob", "gpt", "Suspended")["status"] == "True"
    # suspend is the one field that may change after the start.
    assert cluster.condition("TrainingJob", "gpt", "SpecLocked") == {}

    cluster.patch("TrainingJob", "gpt", {"spec": {"suspend": False}})
    cluster.wait_for("RayJob resumed", lambda: cluster.get("RayJob", "gpt-train")["spec"]["suspend"] is False)
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    assert cluster.condition("TrainingJob", "gpt", "Suspended")["status"] == "False"


def test_a_spec_change_after_the_start_is_recorded_and_the_job_left_alone(cluster: Cluster) -> None:
    cluster.apply(training_job())
    before = cluster.wait_child("RayJob", "gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    cluster.patch("TrainingJob", "gpt", {"spec": {"training": {"maxSteps": 5000}}})
    locked = cluster.wait_for(
        "SpecLocked", lambda: cluster.condition("TrainingJob", "gpt", "SpecLocked").get("status") == "True"
    )
    assert locked
    condition = cluster.condition("TrainingJob", "gpt", "SpecLocked")
    assert condition["reason"] == "SpecChangeIgnored" and "generation 2" in condition["message"]
    status = cluster.wait_status("TrainingJob", "gpt", observedGeneration=2)
    assert status["phase"] == "Running"
    assert cluster.get("RayJob", "gpt-train")["spec"] == before["spec"]
    warning = cluster.wait_for(
        "a SpecChangeIgnored Event",
        lambda: [e for e in cluster.events("TrainingJob", "gpt") if e[1] == "SpecChangeIgnored"],
    )
    assert warning[0][0] == "Warning" and "create a new TrainingJob" in warning[0][2]
    assert cluster.names("RayJob") == ["gpt-train"]
    # Later reconciles of the same generation keep the record (the lock is derived once per generation).
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_status("TrainingJob", "gpt", phase="Succeeded")
    assert cluster.condition("TrainingJob", "gpt", "SpecLocked") == condition


def test_bad_input_fails_with_validation_failed_and_a_fixed_spec_starts(cluster: Cluster) -> None:
    invalid_before = counter(RECONCILES, "TrainingJob", "invalid")
    cluster.apply(training_job(workers={"count": 2, "cpu": "lots"}))
    failed = cluster.wait_status("TrainingJob", "gpt", phase="Failed")
    assert failed["message"] == (
        f"TrainingJob {NAMESPACE}/gpt: spec.workers.cpu: 'lots' is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)"
    )
    condition = cluster.condition("TrainingJob", "gpt", "Failed")
    assert (condition["status"], condition["reason"]) == ("True", "ValidationFailed")
    assert cluster.names("RayJob") == []
    # Counted once the operator has the answer to its status write (the watch may show the write first).
    cluster.wait_for(
        "the invalid reconcile counted", lambda: counter(RECONCILES, "TrainingJob", "invalid") > invalid_before
    )
    event = cluster.wait_for("a Failed Event", lambda: cluster.events("TrainingJob", "gpt"))
    assert event[-1] == ("Warning", "Failed", failed["message"])
    assert counter(RECONCILES, "TrainingJob", "invalid") == invalid_before + 1  # not retried in a loop

    cluster.patch("TrainingJob", "gpt", {"spec": {"workers": {"count": 2, "cpu": 1}}})
    cluster.wait_child("RayJob", "gpt-train")
    cluster.wait_status("TrainingJob", "gpt", phase="Pending", observedGeneration=2)
    assert cluster.condition("TrainingJob", "gpt", "Failed")["status"] == "False"
    assert cluster.operator is not None and cluster.operator.alive


def test_a_missing_datapipeline_is_a_condition_and_the_job_starts_once_it_succeeds(cluster: Cluster) -> None:
    cluster.apply(training_job(dataRef={"name": "later"}))
    cluster.wait_status("TrainingJob", "gpt", phase="Pending")
    condition = cluster.wait_for("DataReady", lambda: cluster.condition("TrainingJob", "gpt", "DataReady"))
    assert (condition["status"], condition["reason"]) == ("False", "DataPipelineNotFound")
    assert condition["message"] == f"DataPipeline later not found in {NAMESPACE}"

    pipeline = quickstart_manifest("DataPipeline")
    pipeline["metadata"]["name"] = "later"
    cluster.apply(pipeline)
    cluster.wait_child("RayJob", "later-data")
    cluster.wait_for(
        "DataReady reason DataPipelineNotReady",
        lambda: cluster.condition("TrainingJob", "gpt", "DataReady").get("reason") == "DataPipelineNotReady",
    )
    cluster.kuberay("RayJob", "later-data", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    # The data step did not report outputUri: the pipeline's spec.output.uri is used.
    cluster.wait_status("DataPipeline", "later", phase="Succeeded", outputUri="runs/quickstart/data")
    rayjob = cluster.wait_child("RayJob", "gpt-train")
    assert runtime_env(rayjob)["KUBEFORGE_DATA_URI"] == "runs/quickstart/data"


def test_a_succeeded_datapipeline_starts_new_jobs_until_it_is_deleted(cluster: Cluster) -> None:
    pipeline = quickstart_manifest("DataPipeline")
    pipeline["metadata"]["name"] = "corpus"
    cluster.apply(pipeline)
    cluster.wait_child("RayJob", "corpus-data")
    cluster.kuberay("RayJob", "corpus-data", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_status("DataPipeline", "corpus", phase="Succeeded")
    reads = re.compile(rf"/apis/kubeforge\.dev/v1alpha1/namespaces/{NAMESPACE}/datapipelines/corpus$")

    def operator_reads() -> int:
        return cluster.server.call(lambda emulator: len(list(emulator["get", reads][by_operator])))

    before = operator_reads()
    # Started from the operator's record of the succeeded pipeline's output, without reading the pipeline.
    cluster.apply(training_job("first", dataRef={"name": "corpus"}))
    assert runtime_env(cluster.wait_child("RayJob", "first-train"))["KUBEFORGE_DATA_URI"] == "runs/quickstart/data"
    assert operator_reads() == before

    cluster.delete("DataPipeline", "corpus")
    cluster.wait_for("the DataPipeline gone", lambda: cluster.get("DataPipeline", "corpus") is None)
    # The operator learns of the deletion from its DataPipeline watch, which no request here can wait on: a moment
    # for that event to arrive (a job created in the same instant may still start from the last known output).
    time.sleep(1.0)
    cluster.apply(training_job("second", dataRef={"name": "corpus"}))
    condition = cluster.wait_for("DataReady", lambda: cluster.condition("TrainingJob", "second", "DataReady"))
    assert (condition["status"], condition["reason"]) == ("False", "DataPipelineNotFound")
    assert cluster.names("RayJob") == ["first-train"]


def test_a_modeldeployment_change_rolls_out_through_its_rayservice(cluster: Cluster) -> None:
    manifest = quickstart_manifest("ModelDeployment")
    manifest["spec"].pop("modelRef")
    manifest["spec"]["modelUri"] = "s3://models/a"
    manifest["spec"]["monitoring"] = {"enabled": True, "labels": {"release": "prom"}}
    cluster.apply(manifest)
    service = cluster.wait_child("RayService", "quickstart-gpt")
    assert "canaryModelUri" not in serve_args(service)
    monitor = cluster.wait_child("PodMonitor", "quickstart-gpt-ray")
    assert monitor["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert monitor["spec"]["selector"]["matchLabels"] == {"kubeforge.dev/modeldeployment": "quickstart-gpt"}
    cluster.kuberay("RayService", "quickstart-gpt", conditions=[READY_CONDITION])
    cluster.wait_status("ModelDeployment", "quickstart-gpt", phase="Ready")

    cluster.patch(
        "ModelDeployment",
        "quickstart-gpt",
        {"spec": {"canary": {"modelUri": "s3://models/b", "trafficPercent": 20}, "monitoring": {"enabled": False}}},
    )
    rolled = cluster.wait_for(
        "the canary in the RayService",
        lambda: "canaryModelUri" in serve_args(cluster.get("RayService", "quickstart-gpt")),
    )
    assert rolled
    updated = cluster.wait_child("RayService", "quickstart-gpt")
    assert serve_args(updated)["canaryModelUri"] == "s3://models/b"
    assert updated["metadata"]["generation"] == service["metadata"]["generation"] + 1
    status = cluster.wait_status("ModelDeployment", "quickstart-gpt", observedGeneration=2)
    assert status["traffic"] == [
        {"version": "stable", "modelUri": "s3://models/a", "percent": 80},
        {"version": "canary", "modelUri": "s3://models/b", "percent": 20},
    ]
    cluster.wait_for("the PodMonitor deleted", lambda: cluster.get("PodMonitor", "quickstart-gpt-ray") is None)
    # KubeRay reports it has not seen the new generation yet: still serving, rolling out.
    cluster.kuberay("RayService", "quickstart-gpt", observedGeneration=updated["metadata"]["generation"] - 1)
    cluster.wait_for(
        "Progressing=True while rolling out",
        lambda: cluster.condition("ModelDeployment", "quickstart-gpt", "Progressing").get("reason") == "RollingOut",
    )
    assert cluster.get("ModelDeployment", "quickstart-gpt")["status"]["phase"] == "Ready"


def owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Whether child carries the owner reference the garbage collector needs to delete it with owner."""
    [ref] = child["metadata"]["ownerReferences"]
    meta = owner["metadata"]
    return (ref["apiVersion"], ref["kind"], ref["name"], ref["uid"]) == (
        owner["apiVersion"],
        owner["kind"],
        meta["name"],
        meta["uid"],
    ) and (ref["controller"], ref["blockOwnerDeletion"]) == (True, True)


def test_deleting_with_no_operator_running_completes_and_the_children_go_by_garbage_collection(
    cluster: Cluster,
) -> None:
    cluster.apply(training_job(failurePolicy={"maxRetries": 1}))
    cluster.wait_child("RayJob", "gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="FAILED", message="OOM")
    cluster.wait_child("RayJob", "gpt-train-r1")
    manifest = quickstart_manifest("ModelDeployment")
    manifest["spec"].pop("modelRef")
    manifest["spec"]["modelUri"] = "s3://models/a"
    manifest["spec"]["monitoring"] = {"enabled": True}
    cluster.apply(manifest)
    cluster.wait_child("RayService", "quickstart-gpt")
    cluster.wait_child("PodMonitor", "quickstart-gpt-ray")
    job, deployment = cluster.get("TrainingJob", "gpt"), cluster.get("ModelDeployment", "quickstart-gpt")
    # No finalizer: nothing has to happen in the operator before a deletion.
    assert "finalizers" not in job["metadata"] and "finalizers" not in deployment["metadata"]
    for kind, name, owner in (
        ("RayJob", "gpt-train", job),
        ("RayJob", "gpt-train-r1", job),
        ("RayService", "quickstart-gpt", deployment),
        ("PodMonitor", "quickstart-gpt-ray", deployment),
        ("Role", "kubeforge-tj-gpt", job),
        ("RoleBinding", "kubeforge-tj-gpt", job),
        ("Role", "kubeforge-md-quickstart-gpt", deployment),
        ("RoleBinding", "kubeforge-md-quickstart-gpt", deployment),
    ):
        assert owned_by(cluster.get(kind, name), owner), f"{kind} {name}"
    for name, owner in (("kubeforge-tj-gpt", job), ("kubeforge-md-quickstart-gpt", deployment)):
        assert owned_by(cluster.service_account(name), owner), f"ServiceAccount {name}"

    cluster.stop_operator()  # stopped, crash-looping or uninstalled
    cluster.delete("TrainingJob", "gpt")
    cluster.delete("ModelDeployment", "quickstart-gpt")
    assert cluster.get("TrainingJob", "gpt") is None and cluster.get("ModelDeployment", "quickstart-gpt") is None
    # The emulator's garbage collector, like Kubernetes', follows the owner references checked above.
    assert cluster.names("RayJob") == [] and cluster.names("RayService") == [] and cluster.names("PodMonitor") == []
    assert cluster.names("Role") == [] and cluster.names("RoleBinding") == []
    assert cluster.service_account("kubeforge-tj-gpt") is None
    assert cluster.service_account("kubeforge-md-quickstart-gpt") is None


def test_each_run_gets_its_own_identity_limited_to_its_own_status(cluster: Cluster) -> None:
    """A ServiceAccount, a Role with resourceNames [the run] and their RoleBinding, created before the RayJob and
    used by its Ray pods; spec.serviceAccountName gets the Role bound to it instead of a new ServiceAccount."""
    cluster.apply(training_job())
    cluster.apply(training_job("own-sa", serviceAccountName="team-a-trainer"))
    rayjob = cluster.wait_child("RayJob", "gpt-train")
    role = cluster.get("Role", "kubeforge-tj-gpt")
    assert role["rules"] == [
        {
            "apiGroups": ["kubeforge.dev"],
            "resources": ["trainingjobs/status"],
            "resourceNames": ["gpt"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["kubeforge.dev"], "resources": ["trainingjobs"], "resourceNames": ["gpt"], "verbs": ["get"]},
    ]
    binding = cluster.get("RoleBinding", "kubeforge-tj-gpt")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeforge-tj-gpt"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubeforge-tj-gpt", "namespace": NAMESPACE}]
    assert cluster.service_account("kubeforge-tj-gpt") is not None
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    for pod in (cluster_spec["headGroupSpec"]["template"], cluster_spec["workerGroupSpecs"][0]["template"]):
        assert pod["spec"]["serviceAccountName"] == "kubeforge-tj-gpt"

    own = cluster.wait_child("RayJob", "own-sa-train")
    assert own["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "team-a-trainer"
    assert cluster.service_account("kubeforge-tj-own-sa") is None
    own_binding = cluster.get("RoleBinding", "kubeforge-tj-own-sa")
    assert own_binding["subjects"] == [{"kind": "ServiceAccount", "name": "team-a-trainer", "namespace": NAMESPACE}]


def test_a_foreign_role_with_the_runs_name_is_never_bound(cluster: Cluster) -> None:
    """A Role of that name not owned by the run could grant anything: the run waits with NameConflict instead."""
    cluster.api.create_namespaced_custom_object(
        "rbac.authorization.k8s.io",
        "v1",
        NAMESPACE,
        "roles",
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "kubeforge-tj-gpt"}},
    )
    cluster.apply(training_job())
    status = cluster.wait_for(
        "the NameConflict status",
        lambda: (
            cluster.condition("TrainingJob", "gpt", "Ready").get("reason") == "NameConflict"
            and cluster.get("TrainingJob", "gpt")["status"]
        ),
    )
    assert "Role kubeforge-tj-gpt exists and is not owned by this TrainingJob" in status["message"], status
    assert cluster.get("RoleBinding", "kubeforge-tj-gpt") is None and cluster.names("RayJob") == []


def test_an_old_finalizer_is_removed_so_it_never_blocks_a_deletion(cluster: Cluster) -> None:
    manifest = training_job()
    manifest["metadata"]["finalizers"] = ["kubeforge.dev/finalizer", "example.com/keep"]
    cluster.apply(manifest)  # as an earlier operator left it
    cluster.wait_for(
        "the old finalizer removed",
        lambda: cluster.get("TrainingJob", "gpt")["metadata"]["finalizers"] == ["example.com/keep"],
    )
    cluster.wait_child("RayJob", "gpt-train")


def test_progress_reported_by_the_workload_survives_the_operators_status_writes(cluster: Cluster) -> None:
    cluster.apply(training_job())
    cluster.wait_child("RayJob", "gpt-train")
    reporter = KubeStatusReporter("TrainingJob", "gpt", NAMESPACE, interval=0.0, api=cluster.api)
    reporter.report(step=40, totalSteps=300, loss=2.5, tokensPerSecond=1234.5, etaSeconds=90.0, progress="40/300")
    reporter.flush()
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    status = cluster.wait_status("TrainingJob", "gpt", phase="Running")
    assert (status["step"], status["loss"], status["progress"]) == (40, 2.5, "40/300")
    reporter.report(step=80, evalMetrics={"loss": 2.1})
    reporter.close()
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    status = cluster.wait_status("TrainingJob", "gpt", phase="Succeeded")
    assert status["step"] == 80 and status["evalMetrics"] == {"loss": 2.1} and status["tokensPerSecond"] == 1234.5


def test_transient_api_errors_are_retried_and_a_half_done_create_is_adopted(cluster: Cluster) -> None:
    creates = re.compile(rf"/apis/ray\.io/v1/namespaces/{NAMESPACE}/rayjobs")
    # The emulator stores the RayJob and answers 503, as an API server behind a flaky proxy might: the retried
    # create finds the name taken (409) and adopts its own RayJob instead of failing or making a second one.
    cluster.server.call(lambda emulator: emulator["post", creates][:1] << 503)
    cluster.apply(training_job())
    cluster.wait_child("RayJob", "gpt-train")
    cluster.wait_status("TrainingJob", "gpt", phase="Pending", childName="gpt-train")
    assert cluster.server.call(lambda emulator: len(list(emulator["post", creates]))) == 2
    assert cluster.names("RayJob") == ["gpt-train"]
    # The child's status gets through as usual afterwards.
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")


def test_a_lora_trainingjobs_adapter_joins_the_running_deployment_when_it_succeeds(cluster: Cluster) -> None:
    manifest = quickstart_manifest("ModelDeployment")
    manifest["spec"].pop("modelRef")
    manifest["spec"]["modelUri"] = "s3://models/base"
    manifest["spec"]["adapters"] = [{"name": "fr", "modelRef": {"name": "lora"}}, {"name": "de", "uri": "s3://a/de"}]
    cluster.apply(manifest)
    service = cluster.wait_child("RayService", "quickstart-gpt")

    def user_config(rayservice: dict[str, Any]) -> dict[str, Any]:
        app = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
        return app["deployments"][0]["user_config"]

    # The base and the adapter given by uri serve at once; the TrainingJob's adapter does not exist yet.
    assert user_config(service)["adapters"] == [{"name": "de", "uri": "s3://a/de", "version": ""}]
    cluster.apply(training_job("lora", output={"uri": "s3://bucket/lora"}))
    cluster.wait_child("RayJob", "lora-train")
    cluster.kuberay("RayJob", "lora-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "lora", phase="Running")
    # The adapter is served from where the TrainingJob's spec exports it, whatever the workload reports.
    cluster.patch_status("TrainingJob", "lora", {"modelUri": "s3://elsewhere/lora", "modelVersion": "a1"})
    cluster.kuberay("RayJob", "lora-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_status("TrainingJob", "lora", phase="Succeeded")

    # Its success adds the adapter to the running application's user_config only: the app args (Serve's code
    # version) are unchanged, so KubeRay's update reconfigures the replicas without restarting the base.
    cluster.wait_for(
        "the adapter in the RayService",
        lambda: len(user_config(cluster.get("RayService", "quickstart-gpt"))["adapters"]) == 2,
    )
    updated = cluster.get("RayService", "quickstart-gpt")
    assert user_config(updated)["adapters"] == [
        {"name": "fr", "uri": "s3://bucket/lora", "version": "a1"},
        {"name": "de", "uri": "s3://a/de", "version": ""},
    ]
    assert serve_args(updated) == serve_args(service)
    assert updated["spec"]["rayClusterConfig"] == service["spec"]["rayClusterConfig"]
    cluster.kuberay("RayService", "quickstart-gpt", conditions=[READY_CONDITION])
    status = cluster.wait_status("ModelDeployment", "quickstart-gpt", phase="Ready")
    assert status["adapters"] == [{"name": "fr", "version": "a1"}, {"name": "de", "version": ""}]
