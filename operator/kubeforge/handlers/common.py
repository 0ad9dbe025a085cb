"""Plumbing shared by the three kinds' handlers: the operator context, writing status, metrics and Events.

Reconciliation is event-driven and level-based. Every trigger — a watch event of the resource itself, of its
child, or of the resource it depends on, and the rare safety-net resync — runs the same reconcile of its kind
(take the resource, its child and its dependency, act, derive the status) and writes the result as one
conditional merge patch of the status subresource carrying the resource's ``resourceVersion``: a concurrent write
makes it fail with 409 and it starts over from a fresh read instead of overwriting newer state. Nothing is written
when nothing changed. The resource comes from what its watch last showed, the child from the operator's own
watch of the children (handlers/informer.py, handlers/state.py), so a reconcile normally reads nothing.

The handlers of our kinds are kopf ``on.event`` handlers only: kopf then keeps no progress or last-handled
annotations and puts no finalizer on our resources (it adds one for delete handlers, timers and daemons, and we
have none), so a resource costs no API write beyond its own status, its children and its Events, and deleting it
never waits for the operator.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import OperatorConfig
from ..constants import CHILD_PLURALS, FINALIZER
from ..events import transition_events
from ..metrics import PHASE_TRACKER, RECONCILE_SECONDS, RECONCILES, RETRIES, PhaseTracker
from ..status import TERMINAL_JOB_PHASES, Observation, derive_status, is_settled, status_patch
from .kube import ApiRejected, Conflict, KubeApi, NotFound, Resource, TransientError, kubeforge_resource
from .posting import EventPoster
from .state import BodyCache, ChildStore, ChildVersions, Dependents, Key, KeyedLocks, Schedule

log = logging.getLogger(__name__)

# How often a conditional status write is retried after 409 Conflicts before a retry is scheduled.
CONFLICT_ATTEMPTS = 5
# How often the resync loop looks for due resources (a wake-up, no API call), and every how many ticks it hands
# freed memory back to the system (a few milliseconds).
TICK_SECONDS = 1.0
TRIM_TICKS = 60

MISSING: Any = object()


Reconcile = Callable[..., Awaitable["Outcome"]]


@dataclass
class OperatorContext:
    """What every handler needs, kept in kopf's memo: settings, the API client, metrics, per-resource locks, child
    versions, the resync schedule and what the watches told us (handlers/state.py: a few strings per resource, the
    body of an unfinished one, slim children)."""

    config: OperatorConfig
    api: KubeApi
    phases: PhaseTracker = PHASE_TRACKER
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    children: ChildVersions = field(default_factory=ChildVersions)
    schedule: Schedule = field(default_factory=Schedule)
    # Per resource, the resourceVersion its status was last reconciled at (written, or found right): the watch
    # event of our own status write carries it and is skipped.
    handled: dict[Key, str] = field(default_factory=dict)
    # (kind, namespace, name) -> phase of every DataPipeline and TrainingJob as its watch last showed it: the
    # resources waiting for one are woken when its phase changes, not by polling.
    dependency_phases: dict[Key, str] = field(default_factory=dict)
    # (namespace, name) -> output URI of every DataPipeline the watch has shown Succeeded (a terminal phase, so the
    # entry stays right until the pipeline is deleted): a TrainingJob's start needs no read of its DataPipeline.
    data_outputs: dict[tuple[str, str], str] = field(default_factory=dict)
    # kind -> its reconcile, for the resync loop.
    reconcilers: dict[str, Reconcile] = field(default_factory=dict)
    # The latest body of every unfinished resource (its watch event, or the answer to our own status write), less
    # managedFields: a child's or a dependency's event reconciles the resource without reading it first. A stale
    # copy costs a 409 on the conditional status write and one read, never a wrong write.
    bodies: BodyCache = field(default_factory=BodyCache)
    # The children as the operator's own watch of them shows them (handlers/informer.py).
    store: ChildStore = field(default_factory=ChildStore)
    # (kind, namespace, name) of every job finished for good: its children's events are ignored without a read.
    settled: set[Key] = field(default_factory=set)
    # dependent kind -> who depends on what (TrainingJob: the DataPipeline it waits for; ModelDeployment: the
    # TrainingJobs whose models it serves), so a dependency's phase change wakes exactly those.
    dependents: defaultdict[str, Dependents] = field(default_factory=lambda: defaultdict(Dependents))
    # Events about our resources, posted in the background over the same client.
    events: EventPoster = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventPoster(self.api)


def context(memo: Any) -> OperatorContext:
    """The operator context stored in kopf's memo by the startup handler."""
    return memo["kubeforge"]


def settle(ctx: OperatorContext, key: Key) -> None:
    """A job finished for good: it keeps nothing in the operator's memory but its key (so its children's events
    are ignored) and its phase in the metrics."""
    _drop(ctx, key)
    ctx.settled.add(key)


def forget(ctx: OperatorContext, kind: str, body: Mapping[str, Any]) -> None:
    """Drop a deleted resource from the metrics, the schedule and the bookkeeping."""
    namespace, name = identity(body)
    key = (kind, namespace, name)
    ctx.phases.forget(kind, namespace, name)
    _drop(ctx, key)
    ctx.settled.discard(key)


def _drop(ctx: OperatorContext, key: Key) -> None:
    kind, namespace, name = key
    ctx.schedule.drop(key)
    ctx.children.forget(key)
    ctx.handled.pop(key, None)
    ctx.bodies.drop(key)
    ctx.store.forget(key)
    if kind in ctx.dependents:
        ctx.dependents[kind].set(namespace, name, [])


@dataclass
class Outcome:
    """The result of one reconcile: the status to write and how it went (a metrics result)."""

    status: dict[str, Any]
    result: str = "ok"
    retried: bool = False
    child_version: str | None = None  # resourceVersion of the child the status was derived from

    @property
    def invalid(self) -> bool:
        """Whether the spec failed validation."""
        return self.result == "invalid"


def spec_changed(body: Mapping[str, Any]) -> bool:
    """Whether the spec changed since the status was last derived (or the resource is new)."""
    generation = (body.get("metadata") or {}).get("generation")
    return (body.get("status") or {}).get("observedGeneration") != generation


async def on_resource_event(
    ctx: OperatorContext,
    kind: str,
    body: Mapping[str, Any],
    event_type: str | None,
    reconcile: Reconcile,
    depends_on: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> None:
    """A watch event of the resource itself (created, changed, listed at start-up, deleted): reconcile it unless
    the event tells nothing new — our own status write coming back, a finished job, or a change outside the spec
    (a workload's progress, a label) while the status already reflects the child as last seen. depends_on names
    the resources (of the kind's dependency) whose phase changes should wake this one."""
    namespace, name = identity(body)
    key = (kind, namespace, name)
    if event_type == "DELETED":
        forget(ctx, kind, body)
        return
    meta = body.get("metadata") or {}
    if FINALIZER in (meta.get("finalizers") or []):
        await release_finalizer(ctx, kind, body)
        return  # the patch's own watch event comes next
    if meta.get("deletionTimestamp"):
        return  # the garbage collector removes the children: nothing to do
    status = body.get("status") or {}
    if is_settled(kind, status, meta.get("generation")):
        ctx.phases.set(kind, namespace, name, status.get("phase"))
        settle(ctx, key)
        return
    ctx.settled.discard(key)  # a fixed spec of a job that failed validation runs again
    ctx.bodies.put(key, body)
    if depends_on is not None:
        ctx.dependents[kind].set(namespace, name, depends_on(body))
    version = meta.get("resourceVersion")
    if version is not None and ctx.handled.get(key) == version:
        return
    if status.get("phase") and not spec_changed(body):  # started, and nothing for it in the spec
        if ctx.children.up_to_date(key):
            ctx.handled[key] = version
            return
        if not ctx.store.synced(CHILD_PLURALS[kind]):
            return  # started before this operator did: reconciled once its children are listed (sync_children)
    await reconcile_via_api(ctx, kind, namespace, name, reconcile, body=ctx.bodies.get(key))


async def release_finalizer(ctx: OperatorContext, kind: str, body: Mapping[str, Any]) -> None:
    """Remove the finalizer that earlier versions put on every resource: nothing needs the operator before a
    deletion any more, and with it a stopped operator would block the deletion."""
    namespace, name = identity(body)
    meta = body.get("metadata") or {}
    finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
    try:
        await ctx.api.patch(kubeforge_resource(kind), namespace, name, patch)
    except (Conflict, TransientError, ApiRejected) as exc:
        log.warning(
            "%s %s/%s: could not remove the old finalizer (retried on its next event): %s", kind, namespace, name, exc
        )


async def on_child_event(
    ctx: OperatorContext,
    kind: str,
    owner: str,
    child: Mapping[str, Any],
    event_type: str,
    reconcile: Reconcile,
    listing: bool = False,
) -> None:
    """A child changed (an event of the operator's own watch, or its listing): record it, and reconcile its owner
    with it when the owner is unfinished and known. Nothing is read: a finished owner's children are ignored, and
    an owner not seen yet is reconciled by its own event, with the child recorded here. During the first listing
    only records are made (a restart would otherwise reconcile each owner once per child type); the owners are
    reconciled after it (sync_children). A child KubeRay has not reported on tells nothing its creator did not
    know, and is skipped."""
    meta = child.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    key = (kind, namespace, owner)
    if key in ctx.settled:
        return
    deleted = event_type == "DELETED"
    if deleted:
        ctx.store.remove(key, meta.get("name", ""))
    else:
        ctx.store.put(key, child)
    version = "" if deleted else meta.get("resourceVersion", "")
    if ctx.children.reflects(key, version):
        return  # the status was derived from exactly this child already (our own creation, a re-listing)
    ctx.children.seen(key, version)
    if listing or key not in ctx.bodies or not (deleted or child.get("status")):
        return
    await reconcile_via_api(ctx, kind, namespace, owner, reconcile, child=MISSING, body=ctx.bodies.get(key))


async def current_child(
    ctx: OperatorContext, resource: Resource, kind: str, namespace: str, owner: str, name: str
) -> dict[str, Any] | None:
    """The owner's child of that name as the watch shows it (slim), or read from the API until the watch has
    listed every child; None when it does not exist."""
    if ctx.store.synced(resource.plural):
        return ctx.store.get((kind, namespace, owner), name)
    return await ctx.api.get(resource, namespace, name)


def record_child(ctx: OperatorContext, kind: str, namespace: str, owner: str, child: Mapping[str, Any]) -> None:
    """A child this operator just created or changed: recorded at once (its watch event comes a moment later), so
    a reconcile in between does not take it for missing."""
    ctx.store.put((kind, namespace, owner), child)


async def sync_children(ctx: OperatorContext, plural: str) -> None:
    """The watch of a child type listed every child: from now on the store answers "does not exist", and every
    known unfinished owner whose status does not reflect its child yet is reconciled (a restart's catch-up: an
    owner that had started waits for this instead of reading its child)."""
    ctx.store.mark_synced(plural)
    for key in ctx.bodies.resources():
        kind, namespace, name = key
        if CHILD_PLURALS[kind] == plural and not ctx.children.up_to_date(key) and kind in ctx.reconcilers:
            await reconcile_via_api(ctx, kind, namespace, name, ctx.reconcilers[kind], body=ctx.bodies.get(key))


async def wake_dependents(
    ctx: OperatorContext,
    dependency_kind: str,
    body: Mapping[str, Any],
    event_type: str | None,
    dependents: list[str],
    kind: str,
    reconcile: Reconcile,
) -> None:
    """A DataPipeline or TrainingJob changed: when its phase changed (or it appeared or went), reconcile the
    resources that wait for it or use it, now rather than at a resync."""
    namespace, name = identity(body)
    key = (dependency_kind, namespace, name)
    phase = None if event_type == "DELETED" else (body.get("status") or {}).get("phase") or "Pending"
    if phase is None or phase in TERMINAL_JOB_PHASES:
        # Not kept for finished dependencies (their events are rare): they cost no memory, and the resources
        # that use one are reconciled on each of its events — an index lookup when none waits.
        ctx.dependency_phases.pop(key, None)
        changed = True
    else:
        changed = ctx.dependency_phases.get(key) != phase
        ctx.dependency_phases[key] = phase
    if changed:
        for dependent in list(dependents):
            body = ctx.bodies.get((kind, namespace, dependent))
            await reconcile_via_api(ctx, kind, namespace, dependent, reconcile, body=body)


def _malloc_trim() -> Callable[[], Any] | None:
    """glibc's malloc_trim, where there is one."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed heap pages back to the system. A start-up lists every resource and child at once (kopf queues all
    their bodies before its workers handle them); freed afterwards, that memory would otherwise stay resident."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


async def resync_loop(ctx: OperatorContext) -> None:
    """The safety net, and the retries after API failures: re-check each unfinished resource when it is due. A
    resource whose status reflects its child as last seen costs no API call. Once a minute, freed memory goes back
    to the system."""
    ticks = 0
    while True:
        await asyncio.sleep(TICK_SECONDS)
        ticks += 1
        if ticks % TRIM_TICKS == 0:
            release_memory()
        for key in ctx.schedule.pop_due(time.monotonic()):
            kind, namespace, name = key
            if ctx.children.up_to_date(key) and not ctx.schedule.failing(key):
                ctx.schedule.succeeded(key, ctx.config.requeue_seconds)
                continue
            await reconcile_via_api(ctx, kind, namespace, name, ctx.reconcilers[kind])


def identity(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a body."""
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name", "")


def make_outcome(
    kind: str,
    body: Mapping[str, Any],
    observation: Observation,
    result: str = "ok",
    retried: bool = False,
    child: Mapping[str, Any] | None = None,
) -> Outcome:
    """Derive the status for an observation of the resource (child: the child object it was derived from)."""
    meta = body.get("metadata") or {}
    status = derive_status(kind, body.get("status") or {}, meta.get("generation"), observation)
    version = (child or {}).get("metadata", {}).get("resourceVersion")
    return Outcome(status=status, result=result, retried=retried, child_version=version)


def _finish(
    ctx: OperatorContext, kind: str, body: Mapping[str, Any], outcome: Outcome, started: float, version: Any
) -> None:
    """Bookkeeping, Events, phase gauge and counters after a reconcile (version: the resource's resourceVersion
    after it)."""
    namespace, name = identity(body)
    key = (kind, namespace, name)
    if is_settled(kind, {**(body.get("status") or {}), **outcome.status}, body.get("metadata", {}).get("generation")):
        settle(ctx, key)
    else:
        ctx.handled[key] = version
        ctx.children.derived(key, outcome.child_version)
        ctx.schedule.succeeded(key, ctx.config.requeue_seconds)
    ctx.events.post(body, transition_events(body.get("status") or {}, outcome.status))
    ctx.phases.set(kind, namespace, name, outcome.status.get("phase"))
    if outcome.retried:
        RETRIES.labels(kind).inc()
    _record(kind, outcome.result, started)


def _record(kind: str, result: str, started: float) -> None:
    RECONCILES.labels(kind, result).inc()
    RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)


async def reconcile_via_api(
    ctx: OperatorContext,
    kind: str,
    namespace: str,
    name: str,
    reconcile: Reconcile,
    *,
    child: Any = MISSING,
    body: Mapping[str, Any] | None = None,
) -> None:
    """Run the kind's reconcile and write its status conditionally; never raises (a failure schedules a retry).

    body, when given (a watch event's or the cache's copy), saves the first read: a stale one only costs a 409."""
    resource = kubeforge_resource(kind)
    key = (kind, namespace, name)
    started = time.monotonic()
    try:
        async with ctx.locks.hold(key):
            for attempt in range(CONFLICT_ATTEMPTS):
                if body is None or attempt:
                    body = await ctx.api.get(resource, namespace, name)
                if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                    return
                outcome = await reconcile(ctx, body, child=child)
                changes = status_patch(body.get("status") or {}, outcome.status)
                version = body["metadata"].get("resourceVersion")
                if changes:
                    try:
                        written = await ctx.api.patch_status(
                            resource, namespace, name, {"metadata": {"resourceVersion": version}, "status": changes}
                        )
                    except Conflict:
                        RECONCILES.labels(kind, "conflict").inc()
                        child = MISSING  # read everything again
                        await asyncio.sleep(0.05 * 2**attempt)
                        continue
                    version = (written or {}).get("metadata", {}).get("resourceVersion")
                    if written:
                        ctx.bodies.put(key, written)
                _finish(ctx, kind, body, outcome, started, version)
                return
            log.warning("%s %s/%s: status kept changing underneath; retrying shortly", kind, namespace, name)
            ctx.schedule.at(key, time.monotonic() + TICK_SECONDS)
    except (TransientError, ApiRejected, Conflict, NotFound) as exc:
        if isinstance(exc, NotFound) and await _gone(ctx, resource, namespace, name):
            return  # deleted since the copy of its body was taken: its DELETED event forgets it
        _record(kind, "error", started)
        delay = ctx.schedule.failed(key, ctx.config.requeue_seconds)
        log.warning("%s %s/%s: reconcile failed, retrying in %.0fs: %s", kind, namespace, name, delay, exc)


async def _gone(ctx: OperatorContext, resource: Any, namespace: str, name: str) -> bool:
    """Whether the resource no longer exists (a 404 was about it, not about a child's missing resource type)."""
    try:
        return await ctx.api.get(resource, namespace, name) is None
    except (TransientError, ApiRejected):
        return False
