"""`kubeforge operator` as its own process (kubeconfig, liveness endpoint, /metrics, SIGTERM), and the conditional
status write that makes concurrent writers safe."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from kubeforge.config import OperatorConfig
from kubeforge.handlers.common import OperatorContext, Outcome, reconcile_via_api
from kubeforge.handlers.kube import KubeApi, kubeforge_resource, load_configuration
from kubeforge.handlers.trainingjob import reconcile_trainingjob
from kubeforge.metrics import RECONCILES
from shipped import quickstart_manifest
from support import EmulatorServer
from support.cluster import NAMESPACE, Cluster
from support.runner import OperatorProcess, write_kubeconfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The chart's workload.serviceAccount.annotations, as it hands them to the operator (a cloud identity).
IRSA = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kubeforge"}


def test_the_operator_process_serves_liveness_and_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    with EmulatorServer() as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        process = OperatorProcess(
            kubeconfig,
            env={"KUBEFORGE_REQUEUE_SECONDS": "60", "KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS": json.dumps(IRSA)},
            log_path=tmp_path / "log",
        )
        process.start()
        try:
            cluster = Cluster(server)
            manifest = quickstart_manifest("TrainingJob")
            manifest["spec"]["dataRef"] = {"uri": "s3://corpus"}
            cluster.apply(manifest)
            rayjob = cluster.wait_child("RayJob", "quickstart-gpt-train")
            # Settings from the environment reach the children (KUBEFORGE_* of the Helm chart).
            pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
            assert pod["serviceAccountName"] == "kubeforge-tj-quickstart-gpt"
            account = cluster.service_account("kubeforge-tj-quickstart-gpt")
            assert account is not None and account["metadata"]["annotations"] == IRSA
            cluster.wait_status("TrainingJob", "quickstart-gpt", phase="Pending", childName="quickstart-gpt-train")
            metrics = cluster.wait_for(
                "the reconcile in /metrics",
                lambda: (
                    (text := process.get("metrics", "/metrics"))
                    and 'kubeforge_reconcile_total{kind="TrainingJob",result="ok"}' in text
                    and text
                ),
            )
            assert 'kubeforge_resources{kind="TrainingJob",phase="Pending"} 1.0' in metrics
            assert 'kubeforge_reconcile_duration_seconds_count{kind="TrainingJob"}' in metrics
            assert "kubeforge_retries_total" in metrics
            health = process.get("health", "/healthz")
            assert '"resources"' in health
        finally:
            code = process.stop()
        log = (tmp_path / "log").read_text()
        assert code == 0, log[-3000:]
        assert "event loop: uvloop.Loop" in log  # the loop `kopf run` picks too (docs/operator.md)


class RacingReconcile:
    """Reconciles a TrainingJob but, the first time, lets another writer change it before the status is written."""

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.calls = 0

    async def __call__(self, ctx: OperatorContext, body: dict[str, Any], child: Any) -> Outcome:
        outcome = await reconcile_trainingjob(ctx, body, child)
        self.calls += 1
        if self.calls == 1:
            resource = kubeforge_resource("TrainingJob")
            await self.ctx.api.patch(resource, NAMESPACE, "gpt", {"metadata": {"labels": {"edited": "by-someone"}}})
        return outcome


def test_a_status_write_that_lost_a_race_gets_409_and_starts_over(tmp_path: Path) -> None:
    with EmulatorServer() as server:
        cluster = Cluster(server)
        manifest = quickstart_manifest("TrainingJob")
        manifest["metadata"]["name"] = "gpt"
        manifest["spec"]["dataRef"] = {"uri": "s3://corpus"}
        cluster.apply(manifest)
        conflicts = RECONCILES.labels("TrainingJob", "conflict")._value.get()

        async def run() -> int:
            ctx = OperatorContext(config=OperatorConfig(), api=KubeApi(load_configuration(server.url)))
            racing = RacingReconcile(ctx)
            try:
                await reconcile_via_api(ctx, "TrainingJob", NAMESPACE, "gpt", racing)
            finally:
                await ctx.api.close()
            return racing.calls

        assert asyncio.run(run()) == 2
        assert RECONCILES.labels("TrainingJob", "conflict")._value.get() == conflicts + 1
        body = cluster.get("TrainingJob", "gpt")
        assert body is not None and body["metadata"]["labels"]["edited"] == "by-someone"
        assert body["status"]["phase"] == "Pending" and body["status"]["childName"] == "gpt-train"
        assert cluster.names("RayJob") == ["gpt-train"]


def test_the_api_client_retries_what_may_heal_and_renews_an_expired_token() -> None:
    with EmulatorServer() as server:
        cluster = Cluster(server)
        manifest = quickstart_manifest("TrainingJob")
        manifest["metadata"]["name"] = "gpt"
        cluster.apply(manifest)
        path = f"/apis/kubeforge.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs/gpt"
        # Three 503s in a row, then a 401 (the token expired), then the answer.
        server.call(lambda emulator: emulator["get", path][:3] << 503)
        server.call(lambda emulator: emulator["get", path][3:4] << 401)
        configuration = load_configuration(server.url)
        configuration.api_key = {"BearerToken": "first"}

        def renew(config: Any) -> None:
            # What the in-cluster and kubeconfig loaders install, called before a token is used: here the token
            # "expires" once the server has answered 401.
            if len(server.call(lambda emulator: list(emulator["get", path]))) >= 4:
                config.api_key = {"BearerToken": "second"}

        configuration.refresh_api_key_hook = renew

        async def read() -> dict[str, Any] | None:
            api = KubeApi(configuration)
            try:
                return await api.get(kubeforge_resource("TrainingJob"), NAMESPACE, "gpt")
            finally:
                await api.close()

        body = asyncio.run(read())
        assert body is not None and body["metadata"]["name"] == "gpt"
        sent = server.call(lambda emulator: [r.headers.get("Authorization") for r in emulator["get", path]])
        assert sent == ["Bearer first"] * 4 + ["Bearer second"]
