"""Kubernetes Events for status transitions: decided by a pure function, posted through kopf."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .conditions import SPEC_LOCKED, get_condition

log = logging.getLogger(__name__)

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


def post_events(body: Mapping[str, Any], events: Iterable[Event]) -> None:
    """Post Events about the resource through kopf's event queue (kopf batches and retries them)."""
    import kopf  # only here: everything else in this module is pure

    for event in events:
        try:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
        except LookupError:  # called outside a running operator (kopf keeps its settings in a context variable)
            log.debug("not posting %s %s: no operator is running", event.type, event.reason)
