"""Plumbing shared by the three kinds' handlers: the operator context, writing status, metrics and Events.

Every handler runs the same level-based reconcile of its kind (read the resource, its child and its dependency,
act, derive the status) and writes the result one of two ways:

* the resource's own handlers (create, resume, update) through kopf's ``patch.status``;
* handlers triggered by another object (a child's status, a dependency becoming ready) and the periodic resync
  through a conditional merge patch of the status subresource carrying the resource's ``resourceVersion``, so a
  concurrent write makes it fail with 409 and it starts over from a fresh read instead of overwriting newer state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..config import OperatorConfig
from ..events import post_events, transition_events
from ..metrics import PHASE_TRACKER, RECONCILE_SECONDS, RECONCILES, RETRIES, PhaseTracker
from ..status import Observation, derive_status, status_patch
from .kube import ApiRejected, Conflict, KubeApi, TransientError, kubeforge_resource

log = logging.getLogger(__name__)

# How often a conditional status write is retried after 409 Conflicts before the resync timer takes over.
CONFLICT_ATTEMPTS = 5
# kopf retries a handler that hit a transient API error after this many seconds (it backs off further itself).
TRANSIENT_DELAY = 5.0
REJECTED_DELAY = 60.0

MISSING: Any = object()


class KeyedLocks:
    """One asyncio.Lock per resource, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
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
    derived from and written with. Where they agree nothing changed since, and the periodic resync skips the
    resource without an API call (thousands of running jobs would otherwise cost a read each per interval)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], str] = {}
        self._derived: dict[tuple[str, str, str], str] = {}

    def seen(self, key: tuple[str, str, str], version: str) -> None:
        """A watch event showed the child at this version ("" when it was deleted)."""
        self._seen[key] = version

    def derived(self, key: tuple[str, str, str], version: str | None) -> None:
        """The status was written from the child at this version (None: no child)."""
        if version is None:
            self._derived.pop(key, None)
        else:
            self._derived[key] = version

    def up_to_date(self, key: tuple[str, str, str]) -> bool:
        """Whether the status reflects the child as last seen."""
        return key in self._derived and self._derived[key] == self._seen.get(key)

    def forget(self, key: tuple[str, str, str]) -> None:
        """Drop a deleted resource."""
        self._seen.pop(key, None)
        self._derived.pop(key, None)


@dataclass
class OperatorContext:
    """What every handler needs, kept in kopf's memo: settings, the API client, metrics, per-resource locks and
    child versions."""

    config: OperatorConfig
    api: KubeApi
    phases: PhaseTracker = PHASE_TRACKER
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    children: ChildVersions = field(default_factory=ChildVersions)
    # (namespace, name) -> output URI of every DataPipeline the watch has shown Succeeded (a terminal phase, so the
    # entry stays right until the pipeline is deleted): a TrainingJob's start needs no read of its DataPipeline.
    data_outputs: dict[tuple[str, str], str] = field(default_factory=dict)


def context(memo: Any) -> OperatorContext:
    """The operator context stored in kopf's memo by the startup handler."""
    return memo["kubeforge"]


def forget(ctx: OperatorContext, kind: str, body: Mapping[str, Any]) -> None:
    """Drop a deleted resource from the phase metrics and the child-version bookkeeping."""
    namespace, name = identity(body)
    ctx.phases.forget(kind, namespace, name)
    ctx.children.forget((kind, namespace, name))


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


Reconcile = Callable[..., Awaitable[Outcome]]


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
    ctx.children.seen((kind, namespace, owner), "" if deleted else child["metadata"].get("resourceVersion", ""))
    if deleted or child.get("status"):
        await reconcile_via_api(ctx, kind, namespace, owner, reconcile, child=MISSING if deleted else child)


async def resync(ctx: OperatorContext, kind: str, body: Mapping[str, Any], reconcile: Reconcile) -> None:
    """The periodic re-check: reconcile unless the status already reflects the child as last seen."""
    namespace, name = identity(body)
    if not ctx.children.up_to_date((kind, namespace, name)):
        await reconcile_via_api(ctx, kind, namespace, name, reconcile, body=dict(body))


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


def _finish(ctx: OperatorContext, kind: str, body: Mapping[str, Any], outcome: Outcome, started: float) -> None:
    """Events, phase gauge and counters for a status that was written."""
    namespace, name = identity(body)
    post_events(body, transition_events(body.get("status") or {}, outcome.status))
    ctx.phases.set(kind, namespace, name, outcome.status.get("phase"))
    if outcome.retried:
        RETRIES.labels(kind).inc()
    _record(kind, outcome.result, started)


def _record(kind: str, result: str, started: float) -> None:
    RECONCILES.labels(kind, result).inc()
    RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)


async def reconcile_in_handler(
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    reconcile: Reconcile,
) -> None:
    """Run the kind's reconcile for a resource's own handler and write the status through kopf's patch.

    Transient API failures become kopf.TemporaryError (kopf retries the handler); an invalid spec becomes
    kopf.PermanentError after its Failed/ValidationFailed status is written.
    """
    ctx = context(memo)
    started = time.monotonic()
    namespace, name = identity(body)
    try:
        async with ctx.locks.hold((kind, namespace, name)):
            outcome = await reconcile(ctx, body)
    except (TransientError, Conflict) as exc:
        _record(kind, "conflict" if isinstance(exc, Conflict) else "error", started)
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=TRANSIENT_DELAY) from None
    except ApiRejected as exc:
        _record(kind, "error", started)
        raise kopf.TemporaryError(f"Kubernetes API refused a request: {exc}", delay=REJECTED_DELAY) from None
    changes = status_patch(body.get("status") or {}, outcome.status)
    if changes:
        patch.status.update(changes)
    _finish(ctx, kind, body, outcome, started)
    if outcome.invalid:
        raise kopf.PermanentError(outcome.status.get("message") or "invalid spec")


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
    """Run the kind's reconcile for a resource this handler is not handling itself (a child or dependency
    changed, or the periodic resync) and write its status conditionally; never raises.

    body, when given (kopf's latest copy, for the resync), saves the first read: a stale one only costs a 409."""
    resource = kubeforge_resource(kind)
    started = time.monotonic()
    try:
        async with ctx.locks.hold((kind, namespace, name)):
            for attempt in range(CONFLICT_ATTEMPTS):
                if body is None or attempt:
                    body = await ctx.api.get(resource, namespace, name)
                if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                    return
                outcome = await reconcile(ctx, body, child=child)
                changes = status_patch(body.get("status") or {}, outcome.status)
                if not changes:
                    ctx.children.derived((kind, namespace, name), outcome.child_version)
                    _finish(ctx, kind, body, outcome, started)
                    return
                version = body["metadata"].get("resourceVersion")
                try:
                    await ctx.api.patch_status(
                        resource, namespace, name, {"metadata": {"resourceVersion": version}, "status": changes}
                    )
                except Conflict:
                    RECONCILES.labels(kind, "conflict").inc()
                    child = MISSING  # read everything again
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                ctx.children.derived((kind, namespace, name), outcome.child_version)
                _finish(ctx, kind, body, outcome, started)
                return
            log.warning("%s %s/%s: status kept changing underneath; the resync will retry", kind, namespace, name)
    except (TransientError, ApiRejected, Conflict) as exc:
        _record(kind, "error", started)
        log.warning("%s %s/%s: reconcile failed, the resync will retry: %s", kind, namespace, name, exc)
