"""The kubeforge operator's kopf entry module: settings, startup, login, and the handlers of the three kinds.

Run it with `kubeforge operator` (settings from the KUBEFORGE_* environment, see kubeforge.config), or with
`kopf run -m kubeforge.controller --all-namespaces --liveness=http://0.0.0.0:8081/healthz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

try:
    import uvloop
except ImportError:  # Windows, where the extra leaves it out: asyncio's own loop
    uvloop = None

from .config import OperatorConfig, is_namespace_pattern
from .constants import FINALIZER, GROUP
from .handlers import RECONCILERS, child_informers, register_all
from .handlers.common import OperatorContext, resync_loop
from .handlers.kube import KubeApi, connection_info, load_configuration
from .handlers.posting import COMPONENT
from .metrics import PHASE_TRACKER, start_metrics_server

log = logging.getLogger(__name__)

PEERING_NAME = "kubeforge"
LIST_CHUNK = 100
WORKER_IDLE_SECONDS = 0.5


@dataclass(frozen=True)
class Setup:
    """What the startup handler is given: the settings, a fixed API server (tests) or None, and a last
    adjustment of kopf's settings (tests: no peering, no Event posting)."""

    config: OperatorConfig
    server: str | None = None
    adjust_settings: Callable[[kopf.OperatorSettings], None] | None = None


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's "last handled" state serves change handlers alone, and we have none, yet kopf builds it (a deep copy
    of the whole body, managedFields included) for every watch event: here it is empty, stored nowhere."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """Nothing to compare: no handler looks at a diff."""
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """Never stored."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing to store (so no annotation write either)."""


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """kopf settings for production: namespace scanning, peering, server-side label filters, Event posting."""
    # Our handlers are watch-event handlers only, so kopf writes neither a finalizer nor progress or diff-base
    # annotations. Should a handler that needs them ever be added, they are ours by name, and in annotations:
    # status belongs to our CRDs' schema (a real API server prunes unknown status fields).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.reporting_component = COMPONENT
    # Our own Events (handlers/posting.py) tell every phase transition; kopf's INFO chatter ("Handler ...
    # succeeded") would cost two more API writes per handled change. Its warnings and errors still become Events.
    settings.posting.level = logging.WARNING
    # Several replicas pause all but one through the KopfPeering object of that name (when it exists).
    settings.peering.name = PEERING_NAME
    settings.peering.mandatory = False
    settings.peering.clusterwide = not config.watch_namespaces
    settings.peering.stealth = True
    # Namespaced mode with exact names: kopf watches exactly those and never lists namespaces (which needs a
    # cluster-wide permission; without it kopf retries for about a minute at every start). A glob pattern needs
    # the namespace list to expand, so the chart then grants list/watch on namespaces (docs/install.md).
    if config.watch_namespaces and not any(is_namespace_pattern(ns) for ns in config.watch_namespaces):
        settings.scanning.disabled = True
    # List in pages at start-up: with 10,000 resources one unpaged list is tens of MB of JSON parsed at once (and
    # kept until it is handled); a page of 100 is about a MB.
    settings.watching.chunk_size = LIST_CHUNK
    # kopf runs a worker task per object, which keeps the object's last body until it has been idle this long: at
    # a start-up over 10,000 resources, kopf's default (5 s) kept most of the listing alive at once (176 MB at
    # the peak against 130 MB with 0.5 s: benchmarks/results/operator.md). A worker is cheap to start again.
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Reconnect watches regularly so a silently dropped connection is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.networking.error_backoffs = (1, 2, 4, 8, 16, 30)


async def operator_startup(settings: kopf.OperatorSettings, memo: Any, param: Setup, **_: Any) -> None:
    """Apply the settings, create the API client and the operator context, serve the metrics."""
    config = param.config
    configure_settings(settings, config)
    if param.adjust_settings is not None:
        param.adjust_settings(settings)
    logging.getLogger("kubeforge").setLevel(config.log_level)
    api = KubeApi(load_configuration(param.server))
    ctx = OperatorContext(config=config, api=api, phases=PHASE_TRACKER, reconcilers=dict(RECONCILERS))
    memo["kubeforge"] = ctx
    # One task re-checks unfinished resources when due (safety net, retries); no per-resource timers. The children
    # are watched by our own informers (handlers/informer.py), kopf watches our three kinds.
    tasks = [asyncio.create_task(resync_loop(ctx), name="kubeforge resync")]
    for informer in child_informers(ctx):
        scope = informer.namespace or "all namespaces"
        tasks.append(asyncio.create_task(informer.run(), name=f"watch {informer.resource.plural} in {scope}"))
    memo["kubeforge_tasks"] = tasks
    start_metrics_server(config.metrics_port)
    loop = type(asyncio.get_running_loop())
    log.info(
        "kubeforge operator started (namespaces: %s; event loop: %s.%s)",
        ", ".join(config.watch_namespaces) or "all",
        loop.__module__,
        loop.__qualname__,
    )


def operator_login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: the same server and identity as the operator's own API client."""
    return connection_info(memo["kubeforge"].api.configuration)


async def operator_cleanup(memo: Any, **_: Any) -> None:
    """Stop the resync and the child watches, post the last Events, close the API client."""
    for task in memo.get("kubeforge_tasks") or []:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ctx = memo.get("kubeforge")
    if ctx is not None:
        await ctx.events.drain()
        await ctx.api.close()


def operator_probe(**_: Any) -> dict[str, int]:
    """Liveness probe payload (/healthz): resources this operator tracks, by kind."""
    counts: dict[str, int] = {}
    for (kind, _phase), count in PHASE_TRACKER.counts().items():
        counts[kind] = counts.get(kind, 0) + count
    return counts


def register(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    server: str | None = None,
    adjust_settings: Callable[[kopf.OperatorSettings], None] | None = None,
) -> None:
    """Register the operator's activities and every handler into registry."""
    setup = Setup(config=config, server=server, adjust_settings=adjust_settings)
    kopf.on.startup(registry=registry, param=setup)(operator_startup)
    kopf.on.login(registry=registry)(operator_login)
    kopf.on.cleanup(registry=registry)(operator_cleanup)
    kopf.on.probe(id="resources", registry=registry)(operator_probe)
    register_all(registry, config)


def run(config: OperatorConfig | None = None) -> None:
    """Run the operator in this process until it is stopped (SIGINT / SIGTERM)."""
    config = config or OperatorConfig.from_env()
    kopf.configure(verbose=config.log_level == "DEBUG", quiet=config.log_level in ("WARNING", "ERROR"))
    registry = kopf.OperatorRegistry()
    register(registry, config)
    # Everything imported and built so far lives as long as the process: keep it out of the garbage collector's
    # full collections, which would otherwise walk it again and again.
    gc.freeze()
    # uvloop, as `kopf run` picks it: the event loop's own work (socket reads and writes, callbacks, timers) was a
    # quarter of the operator's CPU on asyncio's loop, written in Python; uvloop does it in C.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        kopf.run(
            loop=runner.get_loop(),
            registry=registry,
            clusterwide=not config.watch_namespaces,
            namespaces=config.watch_namespaces,
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
        )


# `kopf run -m kubeforge.controller` imports this module and runs the default registry.
register(kopf.get_default_registry(), OperatorConfig.from_env())
