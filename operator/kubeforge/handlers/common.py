"""Plumbing shared by the three kinds' handlers: the operator context, writing status, metrics and Events.

Reconciliation is event-driven and level-based. Every trigger — a watch event of the resource itself, of its
child, or of the resource it depends on, and the rare safety-net resync — runs the same reconcile of its kind
(read the resource, its child and its dependency, act, derive the status) and writes the result as one
conditional merge patch of the status subresource carrying the resource's ``resourceVersion``: a concurrent write
makes it fail with 409 and it starts over from a fresh read instead of overwriting newer state. Nothing is written
when nothing changed.

The handlers are kopf ``on.event`` handlers only: kopf then keeps no progress or last-handled annotations and puts
no finalizer on our resources (it adds one for delete handlers, timers and daemons, and we have none), so a resource
costs no API write beyond its own status, its child and its Events, and deleting it never waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import OperatorConfig
from ..constants import FINALIZER
from ..events import transition_events
from ..metrics import PHASE_TRACKER, RECONCILE_SECONDS, RECONCILES, RETRIES, PhaseTracker
from ..status import TERMINAL_JOB_PHASES, Observation, derive_status, is_settled, status_patch
from .kube import ApiRejected, Conflict, KubeApi, NotFound, TransientError, kubeforge_resource
from .posting import EventPoster

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (kind, namespace, name)

# How often a conditional status write is retried after 409 Conflicts before a retry is scheduled.
CONFLICT_ATTEMPTS = 5
# A reconcile that failed on the API is retried after this many seconds, doubling per failure up to the resync.
RETRY_DELAY = 5.0
# How often the resync loop looks for due resources (a wake-up, no API call), and every how many ticks it hands
# freed memory back to the system (a few milliseconds).
TICK_SECONDS = 1.0
TRIM_TICKS = 60

MISSING: Any = object()


class KeyedLocks:
    """One asyncio.Lock per resource, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Key, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        """Serialise this operator's reconciles of one resource."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class ChildVersions:
    """Per resource, the resourceVersion of its child in the latest watch event, and the one its status was last
    derived from and written with. Where they agree nothing changed since, and the resync and the resource's own
    events skip the resource without an API call (thousands of running jobs would otherwise cost a read each)."""

    def __init__(self) -> None:
        self._seen: dict[Key, str] = {}
        self._derived: dict[Key, str] = {}

    def seen(self, key: Key, version: str) -> None:
        """A watch event showed the child at this version ("" when it was deleted)."""
        self._seen[key] = version

    def derived(self, key: Key, version: str | None) -> None:
        """The status was written from the child at this version (None: no child)."""
        if version is None:
            self._derived.pop(key, None)
        else:
            self._derived[key] = version

    def up_to_date(self, key: Key) -> bool:
        """Whether the status reflects the child as last seen."""
        return key in self._derived and self._derived[key] == self._seen.get(key)

    def reflects(self, key: Key, version: str) -> bool:
        """Whether the status was derived from the child at exactly this version."""
        return key in self._derived and self._derived[key] == version

    def forget(self, key: Key) -> None:
        """Drop a deleted or finished resource."""
        self._seen.pop(key, None)
        self._derived.pop(key, None)


class Schedule:
    """When each unfinished resource is next re-checked: the safety-net resync, or a retry after an API failure.

    A heap of (due, key) with the current due time per key in a dict (stale heap entries are skipped), so a tick
    costs nothing when nothing is due, however many resources there are. Finished resources are not in it."""

    def __init__(self) -> None:
        self._due: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._heap: list[tuple[float, Key]] = []

    def __len__(self) -> int:
        return len(self._due)

    def at(self, key: Key, due: float) -> None:
        """Re-check key at the monotonic time due."""
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        if len(self._heap) > 4 * len(self._due) + 64:  # rescheduling left many stale entries: rebuild
            self._heap = [(when, k) for k, when in self._due.items()]
            heapq.heapify(self._heap)

    def succeeded(self, key: Key, resync: float) -> None:
        """key was reconciled: next re-check after a full resync period."""
        self._failures.pop(key, None)
        self.at(key, time.monotonic() + resync)

    def failed(self, key: Key, resync: float) -> float:
        """key failed on the API: retry with exponential backoff; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(RETRY_DELAY * 2**failures, resync)
        self.at(key, time.monotonic() + delay)
        return delay

    def failing(self, key: Key) -> bool:
        """Whether key's last reconcile failed on the API."""
        return key in self._failures

    def drop(self, key: Key) -> None:
        """key finished or was deleted: never re-check it."""
        self._due.pop(key, None)
        self._failures.pop(key, None)

    def pop_due(self, now: float) -> list[Key]:
        """The keys due at now, removed from the schedule (a reconcile schedules them again)."""
        due: list[Key] = []
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            if self._due.get(key) == when:
                del self._due[key]
                due.append(key)
        return due


class BodyCache:
    """The latest known body per resource, without managedFields (the largest part, and never read here)."""

    def __init__(self) -> None:
        self._bodies: dict[Key, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def put(self, key: Key, body: Mapping[str, Any]) -> None:
        """Keep body as the latest of key."""
        meta = body.get("metadata") or {}
        if "managedFields" in meta:
            body = {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        self._bodies[key] = dict(body)

    def get(self, key: Key) -> dict[str, Any] | None:
        """The latest known body of key, or None."""
        return self._bodies.get(key)

    def drop(self, key: Key) -> None:
        """Forget key (finished or deleted)."""
        self._bodies.pop(key, None)


Reconcile = Callable[..., Awaitable["Outcome"]]


@dataclass
class OperatorContext:
    """What every handler needs, kept in kopf's memo: settings, the API client, metrics, per-resource locks, child
    versions, the resync schedule and what the watches told us (a few strings per resource, no bodies)."""

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
    bodies: BodyCache = field(default_factory=lambda: BodyCache())
    # Events about our resources, posted in the background over the same client.
    events: EventPoster = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventPoster(self.api)


def context(memo: Any) -> OperatorContext:
    """The operator context stored in kopf's memo by the startup handler."""
    return memo["kubeforge"]


def settle(ctx: OperatorContext, key: Key) -> None:
    """A job finished for good: it keeps nothing in the operator's memory but its phase in the metrics (and its
    entry in kopf's index of finished jobs, handlers/__init__.py)."""
    ctx.schedule.drop(key)
    ctx.children.forget(key)
    ctx.handled.pop(key, None)
    ctx.bodies.drop(key)


def forget(ctx: OperatorContext, kind: str, body: Mapping[str, Any]) -> None:
    """Drop a deleted resource from the metrics, the schedule and the bookkeeping."""
    namespace, name = identity(body)
    key = (kind, namespace, name)
    ctx.phases.forget(kind, namespace, name)
    settle(ctx, key)


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
    ctx: OperatorContext, kind: str, body: Mapping[str, Any], event_type: str | None, reconcile: Reconcile
) -> None:
    """A watch event of the resource itself (created, changed, listed at start-up, deleted): reconcile it unless
    the event tells nothing new — our own status write coming back, a finished job, or a change outside the spec
    (a workload's progress, a label) while the status already reflects the child as last seen."""
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
    ctx.bodies.put(key, body)
    version = meta.get("resourceVersion")
    if version is not None and ctx.handled.get(key) == version:
        return
    if status.get("phase") and not spec_changed(body) and ctx.children.up_to_date(key):
        ctx.handled[key] = version
        return
    await reconcile_via_api(ctx, kind, namespace, name, reconcile, body=dict(body))


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


async def follow_child(
    ctx: OperatorContext,
    kind: str,
    owner: str | None,
    child: Mapping[str, Any],
    event_type: str | None,
    reconcile: Reconcile,
) -> None:
    """A child changed (a watch event): reconcile its owner with it. A child KubeRay has not reported on yet
    tells nothing its creator did not know, and is skipped."""
    namespace = child.get("metadata", {}).get("namespace")
    if not owner or not namespace:
        return
    deleted = event_type == "DELETED"
    key = (kind, namespace, owner)
    version = "" if deleted else child["metadata"].get("resourceVersion", "")
    if ctx.children.reflects(key, version):
        return  # the status was derived from exactly this child already (a re-listed child at start-up)
    ctx.children.seen(key, version)
    if deleted or child.get("status"):
        child_now = MISSING if deleted else child
        await reconcile_via_api(ctx, kind, namespace, owner, reconcile, child=child_now, body=ctx.bodies.get(key))


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
