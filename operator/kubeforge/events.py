"""Kubernetes Events for status transitions: which ones (a pure function), and the Event object to post."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .conditions import SPEC_LOCKED, get_condition

NORMAL = "Normal"
WARNING = "Warning"

# Event reason per phase entered (Kubernetes reasons are CamelCase words, e.g. Started, Completed).
PHASE_REASONS = {
    "Pending": "Pending",
    "Running": "Started",
    "Succeeded": "Completed",
    "Failed": "Failed",
    "Suspended": "Suspended",
    "Deploying": "Deploying",
    "Ready": "Ready",
    "Degraded": "Degraded",
}
WARNING_PHASES = frozenset({"Failed", "Degraded"})
MAX_MESSAGE_LENGTH = 1024  # what the API server keeps of a message


@dataclass(frozen=True)
class Event:
    """One Kubernetes Event about a resource."""

    type: str
    reason: str
    message: str


def transition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """The Events for going from status old to status new: one per phase transition (a retry, which starts a new
    attempt, is one too), and a Warning when a spec change is ignored. Nothing else: every Event is an API write,
    and the status carries the rest (a waiting reason, the child's name)."""
    events: list[Event] = []
    merged = {**old, **new}
    old_conditions = old.get("conditions") or []
    new_conditions = merged.get("conditions") or []
    retried = (merged.get("retries") or 0) > (old.get("retries") or 0)
    if retried:
        events.append(Event(WARNING, "Retrying", f"retry {merged['retries']}: {old.get('message') or 'job failed'}"))
    before, after = get_condition(old_conditions, SPEC_LOCKED), get_condition(new_conditions, SPEC_LOCKED)
    if after and after.get("status") == "True" and (before or {}).get("status") != "True":
        events.append(Event(WARNING, "SpecChangeIgnored", after.get("message", "")))
    phase = merged.get("phase")
    if phase and phase != old.get("phase") and not retried:
        event_type = WARNING if phase in WARNING_PHASES else NORMAL
        events.append(Event(event_type, PHASE_REASONS.get(phase, phase), merged.get("message") or phase))
    return events


def event_body(
    owner: Mapping[str, Any], event: Event, component: str, instance: str, now: datetime.datetime
) -> dict[str, Any]:
    """The core/v1 Event about owner, as `kubectl describe` and `kubectl get events` show it."""
    meta = owner.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    utc = now.astimezone(datetime.timezone.utc)
    stamp = utc.strftime("%Y-%m-%dT%H:%M:%SZ")  # metav1.Time: RFC 3339 in seconds
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": namespace, "generateName": f"{meta.get('name', 'kubeforge')}."},
        "involvedObject": {
            "apiVersion": owner.get("apiVersion"),
            "kind": owner.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE_LENGTH],
        "action": event.reason,
        "source": {"component": component},  # the "From" column of `kubectl describe`
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),  # metav1.MicroTime: always six fraction digits
        "count": 1,
    }
