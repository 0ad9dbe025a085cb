"""`kubeforge status [NAME|KIND/NAME...]`: the local status files as a `kubectl get kubeforge`-style table or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ..constants import KINDS
from .status import Status, StatusStore
from .summary import STATUS_COLUMNS, format_table, status_rows

_KIND_ALIASES = {alias: kind for kind, names in KINDS.items() for alias in (kind.lower(), *names)}


def parse_selector(text: str) -> tuple[str | None, str] | None:
    """'NAME' -> (None, NAME); 'KIND/NAME' (kind, plural, singular or short name) -> (Kind, NAME); None if unknown."""
    if "/" not in text:
        return None, text
    kind, name = text.split("/", 1)
    canonical = _KIND_ALIASES.get(kind.lower())
    return (canonical, name) if canonical else None


def select(
    entries: Iterable[tuple[str, str, Status]], selectors: Sequence[tuple[str | None, str]]
) -> list[tuple[str, str, Status]]:
    """The entries matching any selector (all entries when there are none)."""
    return [
        (kind, name, status)
        for kind, name, status in entries
        if not selectors or any(name == n and (k is None or k == kind) for k, n in selectors)
    ]


def print_status(state_dir: Path, names: Sequence[str], output: str = "table") -> int:
    """Print the selected statuses; exit 1 when a selector is bad or matches nothing."""
    store = StatusStore(state_dir)
    selectors = []
    for text in names:
        parsed = parse_selector(text)
        if parsed is None:
            print(f"kubeforge status: {text}: unknown kind (use one of {', '.join(KINDS)})", file=sys.stderr)
            return 1
        selectors.append(parsed)
    entries = select(store.entries(), selectors)
    if not entries:
        where = f"in {state_dir}" if store.directory.exists() else f"({state_dir} holds no status yet)"
        what = " ".join(names) if names else "resources"
        print(f"kubeforge status: no {what} found {where}; run `kubeforge run DIR` first", file=sys.stderr)
        return 1
    if output == "json":
        items = [{"kind": k, "name": n, "status": s} for k, n, s in entries]
        print(json.dumps(items, indent=2, sort_keys=True))
        return 0
    print(format_table(STATUS_COLUMNS, status_rows(entries, datetime.now(timezone.utc))))
    return 0
