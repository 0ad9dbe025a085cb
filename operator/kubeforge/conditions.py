"""Standard Kubernetes conditions (metav1.Condition) as plain dicts: pure helpers shared by the operator and the
local runner, so a resource's status reads the same whether a cluster or `kubeforge run` wrote it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# Condition types kubeforge sets.
READY = "Ready"
PROGRESSING = "Progressing"
FAILED = "Failed"
SUSPENDED = "Suspended"
DATA_READY = "DataReady"
MODEL_READY = "ModelReady"
SPEC_LOCKED = "SpecLocked"

# Reasons used by more than one writer.
REASON_VALIDATION_FAILED = "ValidationFailed"


def now_rfc3339(now: datetime | None = None) -> str:
    """A timestamp as Kubernetes writes it (UTC, seconds)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """A new condition list with type_ set; lastTransitionTime changes only when the status changes."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status_text
    condition = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now or now_rfc3339()) if changed else previous.get("lastTransitionTime"),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != type_] + [condition]


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    """Whether the condition of that type exists and is True."""
    cond = get_condition(conditions, type_)
    return bool(cond and cond.get("status") == "True")
