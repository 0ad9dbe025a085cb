"""Kubernetes Events, posted in the background by the operator's own API client.

An Event is auxiliary: posting one never holds up a reconcile, and one that cannot be posted (after the client's
retries of what may heal) is logged and dropped, as client-go's event recorder does. kopf posts only its own
warnings and errors (controller.configure_settings); ours are cheaper here, on the connection pool the operator
already uses.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from ..events import Event, event_body
from .kube import ApiRejected, Conflict, KubeApi, NotFound, Resource, TransientError

log = logging.getLogger(__name__)

EVENTS = Resource("", "v1", "events")
COMPONENT = "kubeforge-operator"


class EventPoster:
    """Posts Events without waiting for them; `drain` waits for those on their way (at shutdown)."""

    def __init__(self, api: KubeApi, component: str = COMPONENT, instance: str | None = None) -> None:
        self.api = api
        self.component = component
        self.instance = instance or socket.gethostname()  # the operator's pod name in a cluster
        self._pending: set[asyncio.Task[None]] = set()

    def post(self, owner: Mapping[str, Any], events: Iterable[Event]) -> None:
        """Post Events about owner in the background (outside a running event loop: nothing)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        for event in events:
            body = event_body(owner, event, self.component, self.instance, now)
            task = loop.create_task(self._post(body))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _post(self, body: dict[str, Any]) -> None:
        namespace = body["metadata"]["namespace"]
        try:
            await self.api.create(EVENTS, namespace, body, answer=False)
        except (TransientError, ApiRejected, Conflict, NotFound) as exc:
            involved = body["involvedObject"]
            log.warning(
                "%s %s/%s: could not post the %s Event: %s",
                involved["kind"],
                namespace,
                involved["name"],
                body["reason"],
                exc,
            )

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait up to timeout seconds for the Events still on their way."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
