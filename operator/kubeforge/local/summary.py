"""Short texts about a status: numbers made readable, the key metrics of each kind, `kubeforge status` rows.

Pure functions; the progress display, the phase lines, `kubeforge status` and the report all use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

Status = dict[str, Any]

STATUS_COLUMNS = ("KIND", "NAME", "PHASE", "PROGRESS", "METRICS", "AGE")


def human_count(value: float | None) -> str:
    """1234 -> '1.2k', 3400000 -> '3.4M'; small numbers unchanged; None -> '-'."""
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def human_duration(seconds: float | None) -> str:
    """75 -> '1m15s', 3700 -> '1h01m', 4 -> '4s'; None -> '-'."""
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp as written by kubeforge.conditions.now_rfc3339, or None."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from start to end (RFC 3339), or None when either is missing."""
    a, b = parse_time(start), parse_time(end)
    return (b - a).total_seconds() if a and b else None


def format_metric(name: str, value: float) -> str:
    """'loss 3.214', 'perplexity 24.9', 'accuracy 0.912'."""
    if not math.isfinite(value):
        return f"{name} {value}"
    if abs(value) >= 100:
        return f"{name} {value:,.0f}"
    return f"{name} {value:.3g}" if abs(value) < 0.01 else f"{name} {value:.3f}".rstrip("0").rstrip(".")


def format_metrics(metrics: dict[str, float] | None, prefix: str = "") -> str:
    """'eval loss 3.2 · eval perplexity 24.9' (empty string for none)."""
    return " · ".join(format_metric(f"{prefix}{k}", v) for k, v in (metrics or {}).items() if v is not None)


def progress_text(kind: str, status: Status) -> str:
    """The PROGRESS column: the workload's own progress text, else step/total, else '-'."""
    if kind == "TrainingJob" and status.get("step") is not None and status.get("totalSteps"):
        return f"{status['step']}/{status['totalSteps']}"
    if kind == "ModelDeployment" and status.get("replicas") is not None:
        return f"{status.get('readyReplicas') or 0}/{status['replicas']} replicas"
    return status.get("progress") or "-"


def metrics_text(kind: str, status: Status) -> str:
    """The key numbers of a status in one line: rows and tokens, losses, the endpoint."""
    parts: list[str] = []
    if kind == "DataPipeline":
        if status.get("rowsIn") is not None:
            parts.append(f"rows {human_count(status['rowsIn'])} -> {human_count(status.get('rowsOut'))}")
        if status.get("tokens") is not None:
            parts.append(f"tokens {human_count(status['tokens'])}")
        if status.get("shards") is not None:
            parts.append(f"shards {status['shards']}")
    elif kind == "TrainingJob":
        if status.get("loss") is not None:
            parts.append(format_metric("loss", status["loss"]))
        test = status.get("testMetrics") or {}
        evals = status.get("evalMetrics") or {}
        if test:
            parts.append(format_metrics(test, "test "))
        elif evals:
            parts.append(format_metrics(evals, "eval "))
        if status.get("tokensPerSecond"):
            parts.append(f"{human_count(status['tokensPerSecond'])} tok/s")
    elif kind == "ModelDeployment":
        if status.get("url"):
            parts.append(status["url"])
        if status.get("modelVersion"):
            parts.append(f"version {status['modelVersion']}")
    return " · ".join(p for p in parts if p) or "-"


def age_text(status: Status, now: datetime) -> str:
    """How long ago the status last changed (completion, progress or start time)."""
    times = [parse_time(status.get(k)) for k in ("completionTime", "lastProgressTime", "startTime")]
    times += [parse_time(cond.get("lastTransitionTime")) for cond in status.get("conditions", [])]
    known = [t for t in times if t]
    return human_duration((now - max(known)).total_seconds()) if known else "-"


def status_rows(entries: Iterable[tuple[str, str, Status]], now: datetime) -> list[tuple[str, ...]]:
    """One `kubeforge status` row per resource: kind, name, phase, progress, metrics, age."""
    return [
        (
            kind,
            name,
            status.get("phase") or "Unknown",
            progress_text(kind, status),
            metrics_text(kind, status),
            age_text(status, now),
        )
        for kind, name, status in entries
    ]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by three spaces, as kubectl prints them."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)
