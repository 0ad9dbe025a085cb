"""The locally applied objects: what the API server would hold for each resource of a local run.

`kubectl apply` stores the object, sets metadata.uid once and bumps metadata.generation whenever the spec changes;
the operator stamps the spec hash. The local runner does the same in `<state dir>/resources/<Kind>/<name>.json`, so
the entry points get a resource exactly like the one a RayJob gets (metadata {name, namespace, uid, generation}).
Relative paths in the spec are made absolute against the directory of the run: Ray workers do not share its cwd.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from ..api import RESOURCE_MODELS, ApiModel
from ..constants import ANNOTATION_SPEC_HASH
from .plan import DEFAULT_NAMESPACE

# Fields holding a location, per kind, as paths into the wire-form object ("[]" walks a list).
URI_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "DataPipeline": (
        ("spec", "source", "uris", "[]"),
        ("spec", "tokenizer", "path"),
        ("spec", "tokenizer", "fromModel"),
        ("spec", "output", "uri"),
    ),
    "TrainingJob": (
        ("spec", "dataRef", "uri"),
        ("spec", "model", "pretrained", "uri"),
        ("spec", "checkpoint", "uri"),
        ("spec", "output", "uri"),
    ),
    "ModelDeployment": (
        ("spec", "modelUri"),
        ("spec", "canary", "modelUri"),
    ),
}


def absolute_location(uri: str, base: Path) -> str:
    """A relative local path made absolute against base; URIs (s3://, file://, ...) and absolute paths unchanged."""
    if "://" in uri:
        return uri
    expanded = os.path.expanduser(uri)
    return expanded if os.path.isabs(expanded) else os.path.normpath(str(base / expanded))


def _map_at(obj: Any, path: tuple[str, ...], func: Any) -> None:
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                if rest:
                    _map_at(item, rest, func)
                elif isinstance(item, str):
                    obj[i] = func(item)
        return
    if not isinstance(obj, dict) or head not in obj:
        return
    if rest:
        _map_at(obj[head], rest, func)
    elif isinstance(obj[head], str):
        obj[head] = func(obj[head])


def with_absolute_locations(kind: str, wire: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of the wire-form resource with every relative path in URI_FIELDS made absolute against base."""
    out = copy.deepcopy(wire)
    for path in URI_FIELDS[kind]:
        _map_at(out, path, lambda uri: absolute_location(uri, base))
    return out


def spec_hash(spec: dict[str, Any]) -> str:
    """A short, stable hash of a spec (canonical JSON)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def applied_object(previous: dict[str, Any] | None, wire: dict[str, Any], now: str) -> dict[str, Any]:
    """The stored object after applying wire over previous: uid and creation time kept, generation bumped when the
    spec changed (as the API server does), the spec hash annotated (as the operator does)."""
    digest = spec_hash(wire["spec"])
    meta_in = wire.get("metadata", {})
    prev_meta = (previous or {}).get("metadata", {})
    prev_hash = prev_meta.get("annotations", {}).get(ANNOTATION_SPEC_HASH)
    generation = prev_meta.get("generation", 0) + (1 if prev_hash != digest else 0)
    metadata = {
        **meta_in,
        "namespace": meta_in.get("namespace") or DEFAULT_NAMESPACE,
        "uid": prev_meta.get("uid") or str(uuid.uuid4()),
        "generation": max(generation, 1),
        "creationTimestamp": prev_meta.get("creationTimestamp") or now,
        "annotations": {**meta_in.get("annotations", {}), ANNOTATION_SPEC_HASH: digest},
    }
    return {"apiVersion": wire["apiVersion"], "kind": wire["kind"], "metadata": metadata, "spec": wire["spec"]}


def typed(obj: dict[str, Any]) -> ApiModel:
    """The stored object as its typed API model (what the entry points take)."""
    return RESOURCE_MODELS[obj["kind"]].model_validate(obj)


class ResourceStore:
    """`<state dir>/resources/<Kind>/<name>.json`: the objects local runs applied."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "resources"

    def path(self, kind: str, name: str) -> Path:
        """Where the object of kind/name is stored."""
        return self.directory / kind / f"{name}.json"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        try:
            return json.loads(self.path(kind, name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def apply(self, wire: dict[str, Any], now: str) -> dict[str, Any]:
        """Store wire (absolute locations already) as applied_object does; returns the stored object."""
        kind, name = wire["kind"], wire["metadata"]["name"]
        obj = applied_object(self.get(kind, name), wire, now)
        path = self.path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
        tmp.replace(path)
        return obj
