"""What a resource costs the API server: the operator's writes per life cycle (the number docs/operator.md states),
none for changes that tell it nothing new, none for finished resources after a restart, and no start-up requests
outside the watched namespaces."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import pytest
from kubeforge.handlers.kube import USER_AGENT
from kubeforge_trainer.progress import KubeStatusReporter
from support import EmulatorServer
from support.cluster import Cluster
from support.manifests import quickstart_manifest
from support.runner import OperatorProcess, write_kubeconfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
# The writes of one TrainingJob from creation to success (docs/operator.md, "API writes per life cycle"): its own
# ServiceAccount, Role and RoleBinding (the run's identity, created once), its RayJob, one status patch per change
# KubeRay reports (Pending, Initializing, Running, Succeeded), one Event per phase entered (Pending, Running,
# Succeeded).
LIFE_CYCLE_WRITES = {
    "POST serviceaccounts": 1,
    "POST roles": 1,
    "POST rolebindings": 1,
    "POST rayjobs": 1,
    "PATCH trainingjobs/status": 4,
    "POST events": 3,
}
# Time for a write the operator would still make to reach the emulator (each is a reaction to a watch event).
QUIET_SECONDS = 1.0


def operator_requests(cluster: Cluster) -> list[tuple[str, list[str]]]:
    """(METHOD, URL path parts) of every request the operator sent so far (both its clients: ours and kopf's)."""

    def collect(emulator: Any) -> list[tuple[str, list[str]]]:
        found = []
        for request in emulator._requests:
            agent = request.headers.get("User-Agent", "")
            if agent.startswith(USER_AGENT) or agent.startswith("kopf/"):
                method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
                found.append((method, request.url.path.strip("/").split("/")))
        return found

    return cluster.server.call(collect)


def operator_writes(cluster: Cluster) -> collections.Counter[str]:
    """The operator's write requests so far, as "METHOD resource[/sub]"."""
    found = []
    for method, parts in operator_requests(cluster):
        if method in WRITES:
            at = parts.index("namespaces") + 2 if "namespaces" in parts else len(parts) - 1
            resource = parts[at] if at < len(parts) else parts[-1]
            sub = parts[at + 2] if len(parts) > at + 2 else ""
            found.append(f"{method} {resource}{'/' + sub if sub else ''}")
    return collections.Counter(found)


def operator_reads(cluster: Cluster) -> collections.Counter[str]:
    """The operator's reads of single objects so far (not its lists and watches), as "resource/name"."""
    return collections.Counter(
        "/".join(parts[-2:])
        for method, parts in operator_requests(cluster)
        if method == "GET" and "namespaces" in parts and len(parts) == parts.index("namespaces") + 4
    )


def training_job(name: str = "gpt") -> dict[str, Any]:
    """The quickstart TrainingJob reading from a URI (no dependency)."""
    manifest = quickstart_manifest("TrainingJob")
    manifest["metadata"]["name"] = name
    manifest["spec"]["dataRef"] = {"uri": "s3://corpus/v1"}
    return manifest


def test_one_training_job_life_cycle_costs_the_documented_writes(cluster: Cluster) -> None:
    cluster.apply(training_job())
    cluster.wait_child("RayJob", "gpt-train")
    cluster.wait_status("TrainingJob", "gpt", phase="Pending", childName="gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Initializing")
    cluster.wait_status("TrainingJob", "gpt", message="RayJob gpt-train: Initializing")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    # The workload's progress reports and a user's label change tell the operator nothing: no reconcile writes.
    reporter = KubeStatusReporter("TrainingJob", "gpt", "ml", interval=0.0, api=cluster.api)
    for step in (10, 20, 30):
        reporter.report(step=step, totalSteps=300, loss=2.5)
        reporter.flush()
    cluster.patch("TrainingJob", "gpt", {"metadata": {"labels": {"team": "a"}}})
    # Let the operator see those events first. Otherwise its status patch for the next transition can carry the
    # resourceVersion of an older body: the server refuses it with 409 and the operator re-reads and patches again.
    # That is one more request, but not one more write; this test counts requests, so it gives the events time.
    time.sleep(QUIET_SECONDS)
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_status("TrainingJob", "gpt", phase="Succeeded")
    cluster.wait_for("three Events", lambda: len(cluster.events("TrainingJob", "gpt")) >= 3)
    time.sleep(QUIET_SECONDS)
    assert dict(operator_writes(cluster)) == LIFE_CYCLE_WRITES
    assert sum(LIFE_CYCLE_WRITES.values()) == 11
    # Nor a single read: the TrainingJob comes from its watch (and the answers to its own writes), the RayJob from
    # the operator's watch of its children.
    assert operator_reads(cluster) == {}

    # A restart re-lists everything: a finished job costs no write (and KubeRay touching its RayJob none either).
    cluster.start_operator()
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", message="touched")
    cluster.apply(training_job("other"))  # proof the restarted operator works
    cluster.wait_status("TrainingJob", "other", phase="Pending", childName="other-train")
    time.sleep(QUIET_SECONDS)
    writes = operator_writes(cluster)
    assert writes["PATCH trainingjobs/status"] == LIFE_CYCLE_WRITES["PATCH trainingjobs/status"] + 1  # other's
    assert writes["POST rayjobs"] == 2 and writes["POST events"] == 4
    assert writes["POST serviceaccounts"] == writes["POST roles"] == writes["POST rolebindings"] == 2
    assert operator_reads(cluster) == {}  # the finished job is known finished from its listing: nothing read


def test_a_restart_picks_up_a_running_job_without_a_read_or_a_write(cluster: Cluster) -> None:
    cluster.apply(training_job())
    cluster.wait_child("RayJob", "gpt-train")
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_status("TrainingJob", "gpt", phase="Running")
    time.sleep(QUIET_SECONDS)
    before = operator_writes(cluster)
    cluster.start_operator()
    time.sleep(QUIET_SECONDS)  # the restarted operator has listed both and found the status right
    assert operator_writes(cluster) == before and operator_reads(cluster) == {}
    # It follows the RayJob from its own watch, from the listing on.
    cluster.kuberay("RayJob", "gpt-train", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_status("TrainingJob", "gpt", phase="Succeeded")
    assert operator_reads(cluster) == {}


def test_a_namespaced_operator_serves_its_namespace_without_listing_namespaces(tmp_path: Path) -> None:
    with EmulatorServer() as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        env = {"KUBEFORGE_WATCH_NAMESPACES": "elsewhere"}  # the command line wins, as with kopf run
        process = OperatorProcess(kubeconfig, env=env, log_path=tmp_path / "log", args=["--namespace", "ml"])
        process.start()
        try:
            cluster = Cluster(server)
            cluster.apply(training_job())
            cluster.wait_status("TrainingJob", "gpt", phase="Pending", childName="gpt-train")
        finally:
            code = process.stop()
        log = (tmp_path / "log").read_text()
        assert code == 0, log[-3000:]
        assert "namespaces" not in {
            path.rstrip("/").rsplit("/", 1)[-1] for path in server.call(lambda e: [r.url.path for r in e._requests])
        }, "the operator listed namespaces"
        assert "403" not in log and "Not enough permissions" not in log
