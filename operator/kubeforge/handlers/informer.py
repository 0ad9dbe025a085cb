"""The operator's own list-and-watch of its children (RayJobs, RayServices), in place of kopf's.

kopf handles a watch event with a worker task per object, its handler machinery and the whole parsed body, and at
start-up it holds every listed body until its indices are complete: for 10,000 RayJobs (pod templates and
managedFields included) that was most of the operator's CPU per job and hundreds of MB. Children need none of
it: an event only updates the owner's slim record (handlers/state.py: ChildStore) and, for an unfinished owner,
runs its reconcile. So this is client-go's informer, reduced: list in pages, then watch from the list's
resourceVersion (bookmarks on), list again when the server answers 410 Gone, back off when it fails. Each body is
slimmed as soon as it is parsed, and only our children are listed (a label selector on the server).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .kube import ApiRejected, Gone, KubeApi, NotFound, Resource, TransientError

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # objects per list page: a 10,000-object listing is never parsed at once
WATCH_SECONDS = 300  # the server ends each watch after about this long; it is resumed from the last version
BACKOFFS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)

# (event type, object, listing) -> None; the type is ADDED, MODIFIED or DELETED.
OnEvent = Callable[[str, dict[str, Any], bool], Awaitable[None]]


class Informer:
    """One child resource type in one namespace (or all): every change becomes an on_event call, in order."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        namespace: str | None,
        selector: str,
        on_event: OnEvent,
        on_synced: Callable[[], Awaitable[None]],
        namespace_patterns: tuple[str, ...] = (),
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.api = api
        self.page_size = page_size
        self.resource = resource
        self.namespace = namespace
        self.selector = selector
        self.on_event = on_event
        self.on_synced = on_synced
        self.namespace_patterns = namespace_patterns
        self.synced = False
        # (namespace, name) -> labels of every object seen: a re-listing tells which ones went while unwatched.
        self._known: dict[tuple[str, str], dict[str, str]] = {}

    async def run(self) -> None:
        """List, then watch, for ever."""
        failures = 0
        while True:
            try:
                version = await self._list()
                if not self.synced:
                    self.synced = True
                    await self.on_synced()
                failures = 0
                while True:
                    version = await self._watch(version)
            except Gone:
                log.debug("%s: the watch's version expired; listing again", self.resource.plural)
                continue
            except NotFound:
                kind = f"{self.resource.plural}.{self.resource.group}"
                problem = f"the API server does not serve {kind} (is KubeRay installed?)"
            except (TransientError, ApiRejected, ValueError) as exc:
                problem = str(exc)
            except Exception:  # a bug in a handler must not end the watch for good
                log.exception("handling a %s event failed", self.resource.plural)
                problem = "an event handler failed"
            delay = BACKOFFS[min(failures, len(BACKOFFS) - 1)]
            failures += 1
            log.warning("watching %s failed: %s; listing again in %.0fs", self.resource.plural, problem, delay)
            await asyncio.sleep(delay)

    def _wanted(self, obj: dict[str, Any]) -> bool:
        """Whether the object is in a watched namespace (namespace patterns are matched here, on the client)."""
        if not self.namespace_patterns:
            return True
        return namespace_matches((obj.get("metadata") or {}).get("namespace") or "", self.namespace_patterns)

    async def _list(self) -> str:
        """List every object, page by page; report each, and the ones gone since the last listing as DELETED."""
        listed: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            page = await self.api.list_page(self.resource, self.namespace, self.selector, self.page_size, token)
            for obj in page.get("items") or []:
                if self._wanted(obj):
                    listed.add(self._remember(obj))
                    await self.on_event("ADDED", obj, not self.synced)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        for key in [key for key in self._known if key not in listed]:
            labels = self._known.pop(key)
            gone = {"metadata": {"namespace": key[0], "name": key[1], "labels": labels}}
            await self.on_event("DELETED", gone, not self.synced)
        return str(meta.get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Report every change after version until the server ends the stream; the last version seen."""
        async for event in self.api.watch(self.resource, self.namespace, self.selector, version, WATCH_SECONDS):
            obj = event.get("object") or {}
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            kind = event.get("type")
            if kind not in ("ADDED", "MODIFIED", "DELETED") or not self._wanted(obj):  # BOOKMARK: version only
                continue
            key = self._remember(obj)
            if kind == "DELETED":
                self._known.pop(key, None)
            await self.on_event(kind, obj, False)
        return version

    def _remember(self, obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        self._known[key] = dict(meta.get("labels") or {})
        return key


def namespace_matches(namespace: str, patterns: tuple[str, ...]) -> bool:
    """kopf's namespace patterns: globs, comma-separated alternatives, and `!glob` to exclude."""
    parts = [part.strip() for pattern in patterns for part in pattern.split(",") if part.strip()]
    included = [p for p in parts if not p.startswith("!")]
    excluded = [p[1:] for p in parts if p.startswith("!")]
    if any(fnmatch.fnmatchcase(namespace, p) for p in excluded):
        return False
    return not included or any(fnmatch.fnmatchcase(namespace, p) for p in included)
