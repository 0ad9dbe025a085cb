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


@dataclass
class OperatorContext:
    """What every handler needs, kept in kopf's memo: settings, the API client, metrics, per-resource locks."""

    config: OperatorConfig
    api: KubeApi
    phases: PhaseTracker = PHASE_TRACKER
    locks: KeyedLocks = field(default_factory=KeyedLocks)


def context(memo: Any) -> OperatorContext:
    """The operator context stored in kopf's memo by the startup handler."""
    return memo["kubeforge"]


@dataclass
class Outcome:
    """The result of one reconcile: the status to write and how it went (a metrics result)."""

    status: dict[str, Any]
    result: str = "ok"
    retried: bool = False

    @property
    def invalid(self) -> bool:
        """Whether the spec failed validation."""
        return self.result == "invalid"


Reconcile = Callable[..., Awaitable[Outcome | None]]


def child_reported(child: Mapping[str, Any]) -> bool:
    """Whether KubeRay has reported on a child yet: until then its event tells nothing the creator did not know."""
    return bool(child.get("status"))


def identity(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a body."""
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name", "")


def make_outcome(
    kind: str, body: Mapping[str, Any], observation: Observation, result: str = "ok", retried: bool = False
) -> Outcome:
    """Derive the status for an observation of the resource."""
    meta = body.get("metadata") or {}
    status = derive_status(kind, body.get("status") or {}, meta.get("generation"), observation)
    return Outcome(status=status, result=result, retried=retried)


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
    *,
    permanent_on_invalid: bool = True,
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
    if outcome is None:
        _record(kind, "ok", started)
        return
    changes = status_patch(body.get("status") or {}, outcome.status)
    if changes:
        patch.status.update(changes)
    _finish(ctx, kind, body, outcome, started)
    if outcome.invalid and permanent_on_invalid:
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
                if outcome is None:
                    _record(kind, "ok", started)
                    return
                changes = status_patch(body.get("status") or {}, outcome.status)
                if not changes:
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
                _finish(ctx, kind, body, outcome, started)
                return
            log.warning("%s %s/%s: status kept changing underneath; the resync will retry", kind, namespace, name)
    except (TransientError, ApiRejected, Conflict) as exc:
        _record(kind, "error", started)
        log.warning("%s %s/%s: reconcile failed, the resync will retry: %s", kind, namespace, name, exc)
