"""failurePolicy through the real operator (kopf over real HTTP, the API emulator): a RayJob whose workload ended on
a permanent error is not retried, and its cause is the Failed condition's message; one lost to a worker is."""

from __future__ import annotations

from typing import Any

import pytest
from support.cluster import Cluster
from support.manifests import quickstart_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAUSE = "TrainingJob/gpt: spec.training.maxSteps: the checkpoints in s3://ckpt are at step 400, past the 300 steps"
# What KubeRay copies into the RayJob's status.message from Ray: the exit status, then the job's last log lines.
RAY_MESSAGE = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    f"2026-12-06 04:00:00 INFO starting\nkubeforge_trainer: permanent error: {CAUSE}\n"
)


def training_job(**spec: Any) -> dict[str, Any]:
    manifest = quickstart_manifest("TrainingJob")
    manifest["metadata"]["name"] = "gpt"
    manifest["spec"]["dataRef"] = {"uri": "s3://corpus/v1"}
    manifest["spec"].update(spec)
    return manifest


def test_a_permanent_error_fails_at_once_and_a_transient_one_is_retried(cluster: Cluster) -> None:
    cluster.apply(training_job(failurePolicy={"maxRetries": 2}))
    cluster.wait_child("RayJob", "gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="FAILED", message="worker OOM")
    cluster.wait_child("RayJob", "gpt-train-r1")
    cluster.wait_status("TrainingJob", "gpt", retries=1, childName="gpt-train-r1")

    cluster.kuberay("RayJob", "gpt-train-r1", jobDeploymentStatus="Complete", jobStatus="FAILED", message=RAY_MESSAGE)
    failed = cluster.wait_status("TrainingJob", "gpt", phase="Failed")
    assert failed["retries"] == 1, "one retry left, not used: no retry can fix it"
    assert cluster.names("RayJob") == ["gpt-train", "gpt-train-r1"]
    condition = cluster.condition("TrainingJob", "gpt", "Failed")
    assert condition["message"] == f"Ray job of RayJob gpt-train-r1 failed: permanent error: {CAUSE}"
