"""Generate CustomResourceDefinitions from the API models (the models are the one source of truth)."""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ..constants import CATEGORY, GROUP, KINDS, VERSION
from . import RESOURCE_MODELS
from .common import NAME_LENGTH_RULE, ApiModel

# Extra columns for `kubectl get`, per kind; phase and age are added to every kind.
PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "DataPipeline": [
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
        {"name": "Rows-In", "type": "integer", "jsonPath": ".status.rowsIn"},
        {"name": "Rows-Out", "type": "integer", "jsonPath": ".status.rowsOut"},
        {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens"},
        {
            "name": "Output",
            "type": "string",
            "jsonPath": ".status.outputUri",
            "priority": 1,
        },
    ],
    "TrainingJob": [
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.loss"},
        {"name": "Eval-Loss", "type": "number", "jsonPath": ".status.evalMetrics.loss"},
        {
            "name": "Tokens/s",
            "type": "number",
            "jsonPath": ".status.tokensPerSecond",
            "priority": 1,
        },
        {
            "name": "ETA-s",
            "type": "number",
            "jsonPath": ".status.etaSeconds",
            "priority": 1,
        },
        {
            "name": "Model",
            "type": "string",
            "jsonPath": ".status.modelUri",
            "priority": 1,
        },
    ],
    "ModelDeployment": [
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Version", "type": "string", "jsonPath": ".status.modelVersion"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
    ],
}

# Bounds on lists, strings and maps of the spec, so the API server can estimate the cost of CEL rules over them
# (unbounded ones are costed at the request size limit).
_DEFAULT_MAX_ITEMS = 256
_DEFAULT_MAX_LENGTH = 4096
_DEFAULT_MAX_PROPERTIES = 256

# An object without parameters. `properties: {}` is stored as an object with neither properties nor
# additionalProperties, on which the API server's CEL cannot evaluate the rules of the enclosing object ("invalid
# object type, expected either Properties or AdditionalProperties"). A map that must stay empty is typed for CEL,
# survives pruning as `{}`, and rejects any key.
_EMPTY_OBJECT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "maxProperties": 0,
}


def _model_defaults(root: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """For every model reachable from root: {alias: default} for fields whose default comes from a factory.

    An object default is written out in full: the API server validates a default against its node's schema and CEL
    rules as written, without applying the nested properties' defaults first (`default: {}` under a rule reading
    `self.train` fails the CRD with "no such key: train").
    """
    found: dict[str, dict[str, Any]] = {}

    def visit(model: type[BaseModel]) -> None:
        if model.__name__ in found:
            return
        defaults: dict[str, Any] = {}
        found[model.__name__] = defaults
        for name, field in model.model_fields.items():
            alias = field.alias or name
            if field.default_factory is not None:
                value = field.default_factory()  # type: ignore[call-arg]
                if isinstance(value, ApiModel):
                    defaults[alias] = value.to_wire()
                elif value:
                    defaults[alias] = value
            for arg in _types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    visit(arg)

    visit(root)
    return found


def _types_in(annotation: Any) -> list[Any]:
    out = [annotation]
    for arg in typing.get_args(annotation):
        out.extend(_types_in(arg))
    return out


def _structural(node: Any, defs: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> Any:
    """Turn a pydantic JSON schema node into a structural OpenAPI v3 schema node."""
    if isinstance(node, list):
        return [_structural(n, defs, defaults) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        target = copy.deepcopy(defs[name])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        target["__model__"] = name
        node = target
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {options} in a structural schema")
        inner = _structural(options[0], defs, defaults)
        inner.update({k: v for k, v in node.items() if k in ("description",)})
        if node.get("default") is not None:
            inner["default"] = node["default"]
        node = inner
    model_name = node.pop("__model__", None)
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if node.get("default", 0) is None:
        node.pop("default")
    for bound, plain in (
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "object" and node.get("additionalProperties") is True and not node.get("properties"):
        # A free-form mapping (dict[str, Any]): structural schemas say so with preserve-unknown-fields.
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        node.pop("default", None)
    elif node.get("type") == "object" and "properties" in node and not node["properties"]:
        # A model without fields (pydantic writes `properties: {}`, additionalProperties false).
        kept = {k: v for k, v in node.items() if k in ("description", "default")}
        node = {**copy.deepcopy(_EMPTY_OBJECT), **kept}
    if node.get("properties"):
        node.pop("additionalProperties", None)
        props = {}
        for key, sub in node["properties"].items():
            props[key] = _structural(sub, defs, defaults)
            if model_name and key in defaults.get(model_name, {}) and "default" not in props[key]:
                props[key]["default"] = defaults[model_name][key]
        node["properties"] = props
        node["type"] = "object"
    if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], defs, defaults)
    if "items" in node:
        node["items"] = _structural(node["items"], defs, defaults)
        node.setdefault("maxItems", _DEFAULT_MAX_ITEMS)
    return node


def _bounded(node: dict[str, Any]) -> None:
    """Give every string and map below node a maximum size, unless it has one (or an enum)."""
    if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
        node["maxLength"] = _DEFAULT_MAX_LENGTH
    if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
        node["maxProperties"] = _DEFAULT_MAX_PROPERTIES
    for sub in node.get("properties", {}).values():
        _bounded(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _bounded(node[key])


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Structural openAPIV3Schema of one model (its $refs inlined, defaults kept)."""
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    defs[model.__name__] = raw
    return _structural({"$ref": f"#/$defs/{model.__name__}"}, defs, _model_defaults(model))


def _conditions_as_map(status: dict[str, Any]) -> None:
    cond = status["properties"]["conditions"]
    cond["x-kubernetes-list-type"] = "map"
    cond["x-kubernetes-list-map-keys"] = ["type"]


def build_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition for one kind."""
    plural, singular, short = KINDS[kind]
    model = RESOURCE_MODELS[kind]
    fields = model.model_fields
    spec_schema = openapi_schema(fields["spec"].annotation)
    _bounded(spec_schema)
    status_model = next(t for t in typing.get_args(fields["status"].annotation) if t is not type(None))
    status_schema = openapi_schema(status_model)
    _conditions_as_map(status_schema)
    schema = {
        "type": "object",
        "description": (model.__doc__ or kind).strip(),
        "required": ["spec"],
        "x-kubernetes-validations": [dict(NAME_LENGTH_RULE)],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this object.",
            },
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    columns = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]
    columns += PRINTER_COLUMNS[kind]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": [short],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_files() -> dict[str, str]:
    """{file name: YAML text} for every CRD, in the layout of crds/."""
    header = "# Generated by `kubeforge crds` from operator/kubeforge/api — do not edit.\n"
    out = {}
    for kind, (plural, _, _) in KINDS.items():
        text = yaml.safe_dump(build_crd(kind), sort_keys=False, width=120)
        out[f"{GROUP}_{plural}.yaml"] = header + text
    return out


def stale_files(directory: Path) -> list[str]:
    """Names of CRD files in directory that are missing or differ from what the models generate."""
    stale = []
    for name, text in crd_files().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(str(path))
    return stale


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into directory; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crd_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
