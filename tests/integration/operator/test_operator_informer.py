"""The operator's own list-and-watch of its children (handlers/informer.py) against the emulator over HTTP: paged
listing with the label selector, then every change in order (objects entering and leaving the selection too), and a
re-listing that reports what went meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kubeforge.handlers.informer import Informer
from kubeforge.handlers.kube import RAYJOBS, KubeApi, Resource, load_configuration
from support import EmulatorServer
from support.cluster import NAMESPACE, Cluster

pytestmark = [pytest.mark.integration]

SELECTOR = "app.kubernetes.io/managed-by=kubeforge"


def rayjob(name: str, ours: bool = True) -> dict[str, Any]:
    """A minimal RayJob, labelled as ours or not."""
    labels = {"app.kubernetes.io/managed-by": "kubeforge"} if ours else {"team": "other"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"entrypoint": "python -c pass"},
    }


def test_the_informer_lists_in_pages_then_reports_every_change_and_what_went_while_unwatched() -> None:
    with EmulatorServer() as server:
        cluster = Cluster(server)
        for index in range(5):
            cluster.apply(rayjob(f"job-{index}"))
        cluster.apply(rayjob("someone-elses", ours=False))
        seen: list[tuple[str, str, bool]] = []
        synced = asyncio.Event()

        async def on_event(kind: str, obj: dict[str, Any], listing: bool) -> None:
            seen.append((kind, obj["metadata"]["name"], listing))

        async def on_synced() -> None:
            synced.set()

        async def wait_for(count: int) -> None:
            for _ in range(200):
                if len(seen) >= count:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"only {seen} after waiting for {count} events")

        async def scenario() -> list[int]:
            api = KubeApi(load_configuration(server.url))
            informer = Informer(api, RAYJOBS, NAMESPACE, SELECTOR, on_event, on_synced, page_size=2)
            task = asyncio.create_task(informer.run())
            try:
                await asyncio.wait_for(synced.wait(), 10)
                assert sorted(seen) == [("ADDED", f"job-{i}", True) for i in range(5)]
                seen.clear()
                await asyncio.to_thread(cluster.apply, rayjob("job-5"))
                await asyncio.to_thread(cluster.patch_status, "RayJob", "job-0", {"jobDeploymentStatus": "Running"})
                await asyncio.to_thread(cluster.delete, "RayJob", "job-1")
                await wait_for(3)
                assert seen == [("ADDED", "job-5", False), ("MODIFIED", "job-0", False), ("DELETED", "job-1", False)]
                # The watch carries the selector: someone else's RayJob is never shown; one of ours losing the label
                # leaves the selection (DELETED), getting it back enters it again (ADDED).
                seen.clear()
                await asyncio.to_thread(cluster.apply, rayjob("someone-elses-too", ours=False))
                for value in (None, "kubeforge"):
                    labels = {"app.kubernetes.io/managed-by": value}
                    await asyncio.to_thread(cluster.patch, "RayJob", "job-3", {"metadata": {"labels": labels}})
                await wait_for(2)
                await asyncio.sleep(0.2)  # nothing else arrives
                assert seen == [("DELETED", "job-3", False), ("ADDED", "job-3", False)]
                task.cancel()
                # Unwatched for a while (a 410 Gone, a lost connection): a new listing reports what went.
                await asyncio.to_thread(cluster.delete, "RayJob", "job-2")
                seen.clear()
                await informer._list()
                deleted = [name for kind, name, _ in seen if kind == "DELETED"]
                assert deleted == ["job-2"] and len(seen) == 5  # the four still there are listed again
                return [len(list(server.emulator["get", "/apis/ray.io/v1/namespaces/ml/rayjobs"]))]
            finally:
                task.cancel()
                await api.close()

        [requests] = asyncio.run(scenario())
        # Five of ours at two a page: three pages, then the watch; the second listing (four left): two pages.
        assert requests == 3 + 1 + 2


def test_a_child_type_the_server_does_not_serve_is_a_clear_warning_and_the_watch_keeps_trying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with EmulatorServer() as server:

        async def nothing(*_: Any) -> None:
            raise AssertionError("no event expected")

        async def scenario() -> tuple[bool, bool]:
            api = KubeApi(load_configuration(server.url))
            missing = Resource("ray.io", "v1", "rayclusters")  # not served by the emulator: like KubeRay absent
            informer = Informer(api, missing, NAMESPACE, SELECTOR, nothing, nothing)
            task = asyncio.create_task(informer.run())
            try:
                await asyncio.sleep(0.5)
                return task.done(), informer.synced
            finally:
                task.cancel()
                await api.close()

        with caplog.at_level(logging.WARNING, logger="kubeforge.handlers.informer"):
            done, synced = asyncio.run(scenario())
        assert not done and not synced
        assert (
            "watching rayclusters failed: the API server does not serve rayclusters.ray.io (is KubeRay installed?)"
            in (caplog.text)
        )
