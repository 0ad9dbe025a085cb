"""The quickstart resources as an API server would return them, for tests and the benchmark."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@functools.cache
def _quickstart() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(QUICKSTART.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        docs[doc["kind"]] = doc
    return docs


def quickstart_manifest(kind: str) -> dict[str, Any]:
    """A copy of examples/quickstart's manifest of that kind, as a user applies it."""
    return copy.deepcopy(_quickstart()[kind])


def quickstart_body(kind: str, namespace: str = "ml", generation: int = 1) -> dict[str, Any]:
    """The quickstart manifest of that kind with the metadata an API server adds."""
    doc = quickstart_manifest(kind)
    doc["metadata"].update(namespace=namespace, uid=f"uid-{kind.lower()}", generation=generation)
    return doc
