"""What the operator remembers between events, per resource: a few strings, the latest body of an unfinished
resource, the slim copy of each child. Pure data structures (no API calls), bounded by the unfinished resources
plus one key per finished one."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

Key = tuple[str, str, str]  # (kind, namespace, name)

# A reconcile that failed on the API is retried after this many seconds, doubling per failure up to the resync.
RETRY_DELAY = 5.0


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
    """The latest known body of every unfinished resource, without managedFields (the largest part, never read
    here): a child's or a dependency's event reconciles the resource without reading it first, and a child's
    event is followed only for a resource in it (a finished resource has nothing to follow)."""

    def __init__(self) -> None:
        self._bodies: dict[Key, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def __contains__(self, key: Key) -> bool:
        return key in self._bodies

    def resources(self) -> list[Key]:
        """Every resource with a body here."""
        return list(self._bodies)

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


class ChildStore:
    """The children (RayJobs, RayServices) as the operator's watch last showed them, slimmed to what the reconciles
    read (names, labels, annotations, spec.suspend, status), per owner. Once the watch of a child type has listed
    every child, a child missing here does not exist (or was created a moment ago: creations are recorded here by
    their creator), and a reconcile needs no read of it. Children of finished owners are not kept."""

    def __init__(self) -> None:
        self._children: dict[Key, dict[str, dict[str, Any]]] = {}
        self._synced: set[str] = set()

    def synced(self, plural: str) -> bool:
        """Whether every child of this type has been listed (the store can answer "does not exist")."""
        return plural in self._synced

    def mark_synced(self, plural: str) -> None:
        """The watch of this child type finished its first listing."""
        self._synced.add(plural)

    def put(self, owner: Key, child: Mapping[str, Any]) -> None:
        """Record the child (slimmed) under its owner."""
        slim = slim_child(child)
        self._children.setdefault(owner, {})[slim["metadata"]["name"]] = slim

    def remove(self, owner: Key, name: str) -> None:
        """The child is gone."""
        children = self._children.get(owner)
        if children is not None:
            children.pop(name, None)
            if not children:
                del self._children[owner]

    def get(self, owner: Key, name: str) -> dict[str, Any] | None:
        """The owner's child of that name, or None."""
        return (self._children.get(owner) or {}).get(name)

    def owners(self) -> list[Key]:
        """Every owner with a child here."""
        return list(self._children)

    def forget(self, owner: Key) -> None:
        """The owner finished or was deleted: drop its children."""
        self._children.pop(owner, None)

    def __len__(self) -> int:
        return sum(len(children) for children in self._children.values())


SLIM_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "annotations")


def slim_child(child: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconciles read of a child: its identity, labels and annotations, spec.suspend and its status (not
    the pod templates or managedFields, most of a RayJob's size). A retry reads the failed RayJob whole."""
    meta = child.get("metadata") or {}
    slim: dict[str, Any] = {"metadata": {k: meta[k] for k in SLIM_METADATA if k in meta}}
    suspend = (child.get("spec") or {}).get("suspend")
    slim["spec"] = {} if suspend is None else {"suspend": suspend}
    if "status" in child:
        slim["status"] = child["status"]
    return slim


class Dependents:
    """(namespace, dependency name) -> names of the resources that wait for or use it (TrainingJobs waiting for a
    DataPipeline, ModelDeployments serving a TrainingJob's model), kept from the dependents' own events."""

    def __init__(self) -> None:
        self._by_dependency: dict[tuple[str, str], set[str]] = {}
        self._by_dependent: dict[tuple[str, str], frozenset[str]] = {}

    def set(self, namespace: str, dependent: str, dependencies: Iterator[str] | list[str]) -> None:
        """dependent (in namespace) now depends on exactly these (none: it is forgotten)."""
        new = frozenset(dependencies)
        old = self._by_dependent.get((namespace, dependent), frozenset())
        if new == old:
            return
        for name in old - new:
            users = self._by_dependency.get((namespace, name))
            if users is not None:
                users.discard(dependent)
                if not users:
                    del self._by_dependency[(namespace, name)]
        for name in new - old:
            self._by_dependency.setdefault((namespace, name), set()).add(dependent)
        if new:
            self._by_dependent[(namespace, dependent)] = new
        else:
            self._by_dependent.pop((namespace, dependent), None)

    def of(self, namespace: str, dependency: str) -> list[str]:
        """The resources that depend on dependency, sorted."""
        return sorted(self._by_dependency.get((namespace, dependency), ()))
