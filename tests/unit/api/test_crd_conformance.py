"""The CRDs in crds/ against the rules a Kubernetes API server (1.29+) applies to them — there is no API server here.

Each rule below was read in apiextensions-apiserver (kubernetes/staging/src/k8s.io/apiextensions-apiserver) and the
Kubernetes documentation ("Extend the Kubernetes API with CustomResourceDefinitions": structural schemas, pruning,
defaulting, validation rules), and is encoded as a test over the committed CRD files:

- Structural schema (pkg/apiserver/schema/validation.go): every node has a `type` ("must not be empty for specified
  object fields") unless it is `x-kubernetes-int-or-string` (then `anyOf` may only be `[{type: integer}, {type:
  string}]`) or preserves unknown fields; `properties` and `additionalProperties` are mutually exclusive; no `$ref`;
  arrays have `items`. Root `metadata` may only be `type: object`.
- CEL typing (apiserver/schema/cel, unstructuredMap): an object node that a rule reaches needs `properties`,
  `additionalProperties` or `x-kubernetes-preserve-unknown-fields`, else "invalid object type, expected either
  Properties or AdditionalProperties". `properties: {}` counts as none (it is dropped when stored). Root rules see
  `apiVersion`, `kind`, `metadata.name` and `metadata.generateName` only (WithTypeAndObjectMeta).
- Defaulting (pkg/apiserver/schema/defaulting/validation.go, ValidateDefaults, and the CRD validation that evaluates
  the rules on defaults): every `default` must survive pruning unchanged ("must not have unknown fields"), validate
  against its node's schema, and satisfy every CEL rule of its subtree *as written* — nested properties' defaults
  are not applied first ("no such key: train evaluating rule ..."). No defaults under `additionalProperties`.
- Object defaulting of custom resources (pkg/apiserver/schema/defaulting/algorithm.go): absent properties get
  their default top-down, then the rules run — which is what `kubeforge validate` reproduces.
- CEL compilation and cost (pkg/apis/apiextensions/validation/validation.go): each rule must compile; its
  estimated cost must stay under StaticEstimatedCostLimit = 10,000,000 per expression and the CRD's total under
  StaticEstimatedCRDCostLimit = 100,000,000. The estimator costs a rule at the maximum size of every list, map and
  string it or an enclosing list touches, so those carry `maxItems` / `maxProperties` / `maxLength`. We cannot run
  cel-go's estimator; we forbid the form a real server rejected (`has(a) != has(b)`: "estimated rule cost exceeds
  budget by factor of more than 100x") and require the bounds.
- Quantities: Kubernetes quantities are integers or strings on the wire (`x-kubernetes-int-or-string`), never
  `number`; the string carries resource.Quantity's grammar as a `pattern` so `"lots"` is refused by the server.

Every message the real API server gave in issue #19 is a regression case at the end. Point
KUBEFORGE_CONFORMANCE_CRDS at another directory (e.g. the CRDs of an older commit) to judge those instead, and
KUBEFORGE_CONFORMANCE_QUICKSTART at other quickstart manifests.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubeforge.validate import apply_defaults, compile_rule, rules_of, to_cel, with_object_meta

REPO_ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = Path(os.environ.get("KUBEFORGE_CONFORMANCE_CRDS", REPO_ROOT / "crds"))
QUICKSTART = Path(os.environ.get("KUBEFORGE_CONFORMANCE_QUICKSTART", REPO_ROOT / "examples" / "quickstart"))
STATIC_ESTIMATED_COST_LIMIT = 10_000_000


def _load() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


SCHEMAS = _load()
KINDS = sorted(SCHEMAS)
assert KINDS == ["DataPipeline", "ModelDeployment", "TrainingJob"], f"no CRDs in {CRD_DIR}"


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, node) of every schema node: `a.b` for properties, `a[]` for items, `a{}` for map values."""
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def node_at(kind: str, path: str) -> dict[str, Any]:
    node = SCHEMAS[kind]
    for part in re.findall(r"[^.\[\]{}]+|\[\]|\{\}", path):
        if part == "[]":
            node = node["items"]
        elif part == "{}":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


def cel_view(value: Any, schema: dict[str, Any], path: str = "self") -> Any:
    """The value as the server's CEL sees it, refusing what the server cannot type (unstructuredMap)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        has_schema = schema.get("properties") or isinstance(schema.get("additionalProperties"), dict)
        if not has_schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            raise AssertionError(f"{path}: invalid object type, expected either Properties or AdditionalProperties")
        for key, item in value.items():
            sub = (schema.get("properties") or {}).get(key) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                cel_view(item, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            cel_view(item, schema["items"], f"{path}[{i}]")
    return to_cel(value, schema)


def evaluate(rule: str, value: Any, schema: dict[str, Any]) -> bool:
    """Evaluate one rule on a value typed by its schema; raises what the server would report as an error."""
    result = compile_rule(rule).evaluate({"self": cel_view(value, schema)})
    if isinstance(result, Exception):
        raise result
    return bool(result)


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """What the server stores: unknown fields dropped (pkg/apiserver/schema/pruning)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: prune(v, extra) for k, v in value.items()}
        return {k: prune(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"]) for v in value]
    return value


def values_below(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(path, value, schema node) for the value and everything in it that the schema describes."""
    yield path, value, schema
    if isinstance(value, dict):
        for key, item in value.items():
            sub = (schema.get("properties") or {}).get(key) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                yield from values_below(item, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from values_below(item, schema["items"], f"{path}[{i}]")


def default_failures(kind: str, path: str) -> list[str]:
    """What the server says about the default at path: schema, pruning and every rule of its subtree as written."""
    node = node_at(kind, path)
    default = node["default"]
    failures = [f"{path}.default: {e.message}" for e in jsonschema.Draft4Validator(node).iter_errors(default)]
    if prune(copy.deepcopy(default), node) != default:
        failures.append(f"{path}.default: must not have unknown fields")
    for where, value, sub in values_below(default, node):
        for rule in sub.get("x-kubernetes-validations", []):
            try:
                ok = evaluate(rule["rule"], value, sub)
            except Exception as exc:
                failures.append(f"{path}.default{where}: {exc} evaluating rule: {rule['message']}")
                continue
            if not ok:
                failures.append(f"{path}.default{where}: {rule['message']}")
    return failures


def risky_rules(kind: str, path: str) -> list[str]:
    """Rules at path in a form the cost estimator rejected on a real server."""
    risky = re.compile(r"has\([^()]*\)\s*[!=]=\s*!?has\(")
    rules = node_at(kind, path).get("x-kubernetes-validations", [])
    return [f"{path}: {r['rule']}" for r in rules if risky.search(r["rule"])]


def server_verdict(kind: str, doc: dict[str, Any]) -> list[str]:
    """What the API server says about a custom resource: schema errors, then the CEL rules on the defaulted object."""
    schema = SCHEMAS[kind]
    found = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]
    stored = prune(copy.deepcopy(doc), schema)
    stored["metadata"] = doc["metadata"]  # ObjectMeta is the server's own, not pruned by the CRD's schema
    defaulted = apply_defaults(stored, schema)
    for path, node in rules_of(schema):
        view = with_object_meta(node) if not path else node
        for value in _instances(defaulted, path):
            for rule in node["x-kubernetes-validations"]:
                try:
                    ok = evaluate(rule["rule"], value, view)
                except Exception as exc:
                    found.append(f"{'.'.join(path)}: {exc}")
                    continue
                if not ok:
                    found.append(f"{'.'.join(path)}: {rule['message']}")
    return found


def _instances(obj: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        yield obj
    elif path[0] == "[]":
        for item in obj if isinstance(obj, list) else []:
            yield from _instances(item, path[1:])
    elif path[0] == "{}":
        for item in obj.values() if isinstance(obj, dict) else []:
            yield from _instances(item, path[1:])
    elif isinstance(obj, dict) and path[0] in obj:
        yield from _instances(obj[path[0]], path[1:])


def quickstart(kind: str) -> dict[str, Any]:
    for path in sorted(QUICKSTART.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] == kind:
            return doc
    raise AssertionError(kind)


# --- The general rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_node_is_structural(kind: str) -> None:
    bad = []
    for path, node in walk(SCHEMAS[kind]):
        int_or_string = node.get("x-kubernetes-int-or-string")
        if not node.get("type") and not int_or_string and not node.get("x-kubernetes-preserve-unknown-fields"):
            bad.append(f"{path}.type: must not be empty for specified object fields")
        if int_or_string and (
            "type" in node
            or node.get("anyOf", [{"type": "integer"}, {"type": "string"}])
            != [
                {"type": "integer"},
                {"type": "string"},
            ]
        ):
            bad.append(f"{path}: x-kubernetes-int-or-string takes no type and anyOf [integer, string] only")
        if "properties" in node and "additionalProperties" in node:
            bad.append(f"{path}: additionalProperties and properties are mutually exclusive")
        if "$ref" in node or isinstance(node.get("additionalProperties"), bool):
            bad.append(f"{path}: $ref and boolean additionalProperties are not supported")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            bad.append(f"{path}: an array needs items")
        if node.get("type") == "object" and path != "metadata":
            typed = node.get("properties") or isinstance(node.get("additionalProperties"), dict)
            if not typed and not node.get("x-kubernetes-preserve-unknown-fields"):
                bad.append(f"{path}: invalid object type, expected either Properties or AdditionalProperties")
        if path.endswith("{}") and "default" in node:
            bad.append(f"{path}: defaults are forbidden under additionalProperties")
    assert bad == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_default_satisfies_its_schema_and_rules_as_written(kind: str) -> None:
    paths = [path for path, node in walk(SCHEMAS[kind]) if "default" in node]
    assert paths, "the CRD has defaults"
    assert [f for path in paths for f in default_failures(kind, path)] == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_rule_compiles_and_reads_declared_fields(kind: str) -> None:
    bad = []
    count = 0
    for path, node in rules_of(SCHEMAS[kind]):
        view = with_object_meta(node) if not path else node
        for rule in node["x-kubernetes-validations"]:
            count += 1
            compile_rule(rule["rule"])  # raises CELParseError
            assert rule.get("message"), f"{path}: a rule without a message"
            for chain in re.findall(r"\bself((?:\.[A-Za-z_]\w*)+)", rule["rule"]):
                sub = view
                for name in chain.lstrip(".").split("."):
                    props = sub.get("properties") or {}
                    if name not in props:
                        bad.append(f"{'.'.join(path)}: {rule['rule']!r} reads undeclared field {name!r}")
                        break
                    sub = props[name]
    assert count >= 3 and bad == []


@pytest.mark.parametrize("kind", KINDS)
def test_no_rule_in_a_form_the_cost_estimator_rejects(kind: str) -> None:
    paths = [".".join(p) for p, _ in rules_of(SCHEMAS[kind]) if p]
    assert [r for path in paths for r in risky_rules(kind, path.replace(".[]", "[]"))] == []


@pytest.mark.parametrize("kind", KINDS)
def test_everything_a_rule_can_reach_is_bounded(kind: str) -> None:
    """Lists, maps and strings inside a rule's node, and the lists around it, carry maximum sizes; the number of
    times a rule runs (the product of the enclosing lists' bounds) stays far below the per-expression budget."""
    bad = []
    for path, node in rules_of(SCHEMAS[kind]):
        if not path:
            continue  # the root rule reads metadata.name's size only, which costs the same at any length
        for where, sub in walk(node, ".".join(path)):
            if sub.get("type") == "array" and "maxItems" not in sub:
                bad.append(f"{where}: no maxItems")
            if isinstance(sub.get("additionalProperties"), dict) and "maxProperties" not in sub:
                bad.append(f"{where}: no maxProperties")
            if sub.get("type") == "string" and "maxLength" not in sub and "enum" not in sub:
                bad.append(f"{where}: no maxLength")
        runs, enclosing = 1, SCHEMAS[kind]
        for part in path:
            if part == "[]":
                runs *= enclosing.get("maxItems") or STATIC_ESTIMATED_COST_LIMIT
                enclosing = enclosing["items"]
            elif part == "{}":
                runs *= enclosing.get("maxProperties") or STATIC_ESTIMATED_COST_LIMIT
                enclosing = enclosing["additionalProperties"]
            else:
                enclosing = enclosing["properties"][part]
        if runs * 100 > STATIC_ESTIMATED_COST_LIMIT:  # 100: a generous cost of one evaluation of our small rules
            bad.append(f"{'.'.join(path)}: the rule may run {runs} times")
    assert bad == []


@pytest.mark.parametrize("kind", KINDS)
def test_quantities_are_int_or_string_with_the_quantity_grammar(kind: str) -> None:
    found = 0
    for path, node in walk(SCHEMAS[kind]):
        if path.rsplit(".", 1)[-1] not in ("cpu", "memory") and not node.get("x-kubernetes-int-or-string"):
            continue
        found += 1
        assert node.get("x-kubernetes-int-or-string") and "type" not in node, f"{path}: not int-or-string"
        validator = jsonschema.Draft4Validator(node)
        for good in (1, "500m", "2Gi", "1.5", "4G", "1e3"):
            assert validator.is_valid(good), f"{path}: {good!r} refused"
        for bad in (0.5, "lots", "2 Gi", "", "-1", True):
            assert not validator.is_valid(bad), f"{path}: {bad!r} accepted"
    assert found >= 2


def test_a_parameterless_operation_survives_pruning_and_the_step_rules_evaluate_on_it() -> None:
    steps = node_at("DataPipeline", "spec.steps")["items"]
    (rule,) = [r for r in steps["x-kubernetes-validations"] if "exists_one" in r["rule"]]
    step = {"dropEmpty": {}}
    assert prune(copy.deepcopy(step), steps) == step
    assert evaluate(rule["rule"], step, steps) is True
    assert evaluate(rule["rule"], {"dropEmpty": {}, "stripHtml": {}}, steps) is False
    assert evaluate(rule["rule"], {}, steps) is False
    assert not jsonschema.Draft4Validator(steps).is_valid({"dropEmpty": {"unexpected": "x"}})


@pytest.mark.parametrize("kind", KINDS)
def test_the_quickstart_is_accepted(kind: str) -> None:
    assert server_verdict(kind, quickstart(kind)) == []


# --- Regression cases: every message the real API server gave in issue #19 ----------------------------------------


def _with(kind: str, dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(quickstart(kind))
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[leaf] = value
    return doc


REGRESSIONS = {
    # CRD creation
    "properties[spec].properties[split].default: no such key: train evaluating rule: split fractions train + "
    "validation + test must sum to 1": lambda: default_failures("DataPipeline", "spec.split"),
    "model.default: no such key: dModel": lambda: default_failures("TrainingJob", "spec.model"),
    "deepspeed.default: no such key: offloadParameters / offloadOptimizer": lambda: default_failures(
        "TrainingJob", "spec.deepspeed"
    ),
    "replicas.default: no such key: min": lambda: default_failures("ModelDeployment", "spec.replicas"),
    "dataRef rule has(self.name) != has(self.uri): estimated rule cost exceeds budget by factor of more than 100x": (
        lambda: risky_rules("TrainingJob", "spec.dataRef")
    ),
    "spec and canary rules has(modelRef) != has(modelUri): estimated rule cost exceeds budget": lambda: (
        risky_rules("ModelDeployment", "spec") + risky_rules("ModelDeployment", "spec.canary")
    ),
    # Creating the quickstart resources
    "spec.steps[0]: invalid object type, expected either Properties or AdditionalProperties": lambda: server_verdict(
        "DataPipeline", quickstart("DataPipeline")
    ),
    'spec.workers.cpu: Invalid value: "number": must be of type integer,string': lambda: (
        server_verdict("TrainingJob", quickstart("TrainingJob"))
        + (
            ["cpu: 0.5 accepted"]
            if not server_verdict("TrainingJob", _with("TrainingJob", "spec.workers.cpu", 0.5))
            else []
        )
    ),
}


@pytest.mark.parametrize("message", list(REGRESSIONS))
def test_what_the_api_server_refused(message: str) -> None:
    assert REGRESSIONS[message]() == []


# Accepted by the API server of today's CRDs although they can never work (issue #19): now refused by the server.
NEVER_WORK = {
    "minChars > maxChars": ("DataPipeline", "spec.steps.5.lengthFilter", {"minChars": 500, "maxChars": 100}),
    "warmupSteps > maxSteps": ("TrainingJob", "spec.training.warmupSteps", 400),
    "maxSteps: 1000000000000000000": ("TrainingJob", "spec.training.maxSteps", 10**18),
    "a 70-character name": ("TrainingJob", "metadata.name", "a" * 70),
    'memory: "lots"': ("TrainingJob", "spec.workers.memory", "lots"),
    "gpu: 2 per worker": ("TrainingJob", "spec.workers.gpu", 2),
}


@pytest.mark.parametrize("case", list(NEVER_WORK))
def test_what_can_never_work_is_refused_by_the_server(case: str) -> None:
    kind, dotted, value = NEVER_WORK[case]
    assert server_verdict(kind, quickstart(kind)) == [], "the unchanged quickstart must be accepted"
    assert server_verdict(kind, _with(kind, dotted, value)) != []
