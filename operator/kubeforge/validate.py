"""Validate kubeforge manifests offline as the API server would, then as the operator would — one line per problem.

A document is judged in the API server's order, and every problem of it is reported in one pass:
1. its schema: the generated CRD's openAPIV3Schema (types, int-or-string quantities, enums, bounds, patterns) and
   the fields the server would prune as unknown (with "did you mean" from the schema);
2. the CRD's CEL rules, evaluated on the object after the server's structural defaulting (the schema's defaults,
   applied top-down), with values typed by the schema as the server types them (a `number` field holding `1` is a
   double);
3. the deeper checks: the typed API model (DNS names, quantities that parse) and what the operator cannot run.
Documents of other kinds (a GitOps repository's Namespaces, Argo CD Applications, Flux objects) are skipped and
counted, unless `strict`. Duplicate YAML keys are errors.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from pydantic import ValidationError

from .api import RESOURCE_MODELS, ApiModel
from .api.common import QUANTITY_PATTERN, quantity_text
from .api.crdgen import build_crd
from .api.trainingjob import legacy_model_message
from .constants import API_VERSION, GROUP

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
QUANTITY_HINT = "is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)"


@dataclass(frozen=True)
class Problem:
    """One error found in one document."""

    source: str
    resource: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.resource}: " if self.resource else ""
        path = f"{self.path}: " if self.path else ""
        return f"{self.source}: {where}{path}{self.message}"

    def to_json(self) -> dict[str, str]:
        """The problem as a JSON object (for `validate -o json`)."""
        return {"source": self.source, "resource": self.resource, "path": self.path, "message": self.message}


@dataclass
class Manifest:
    """A parsed, valid kubeforge resource and where it came from."""

    source: str
    raw: dict[str, Any]
    resource: ApiModel

    @property
    def kind(self) -> str:
        """Kind of the resource."""
        return self.raw["kind"]

    @property
    def name(self) -> str:
        """metadata.name of the resource."""
        return self.raw["metadata"]["name"]


@dataclass
class Report:
    """Everything `validate` found."""

    manifests: list[Manifest] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, Kind/name) of other kinds

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


# --- Files and YAML ------------------------------------------------------------------------------------------------


def manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Expand files and directories (recursively) into manifest files, sorted."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not found:
                problems.append(Problem(str(path), "", "", "directory holds no .yaml, .yml or .json files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), "", "", "no such file or directory"))
    return files, problems


def _duplicate_keys(node: yaml.Node, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, message) for every key that appears twice in one mapping of a composed YAML document."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = f"{path}.{key}" if path else str(key)
            if key is not None:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    yield child, f"duplicate key (line {line}; first on line {seen[key]}): YAML keeps only the last"
                else:
                    seen[key] = key_node.start_mark.line + 1
            yield from _duplicate_keys(value_node, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{i}]")


def load_documents(path: Path) -> tuple[list[tuple[str, Any, list[tuple[str, str]]]], list[Problem]]:
    """[(source label, document, duplicate keys)] of a multi-document YAML file; empty documents are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [], [Problem(str(path), "", "", "file is not valid UTF-8")]
    except OSError as exc:
        return [], [Problem(str(path), "", "", f"cannot read file: {exc.strerror}")]
    docs: list[tuple[Any, list[tuple[str, str]]]] = []
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            docs.append((loader.construct_document(node), list(_duplicate_keys(node))))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [], [Problem(str(path), "", "", f"malformed YAML: {where}{problem}")]
    finally:
        loader.dispose()
    numbered = [
        (f"{path}" if len(docs) == 1 else f"{path}#{i + 1}", d, dups)
        for i, (d, dups) in enumerate(docs)
        if d is not None
    ]
    if not numbered:
        return [], [Problem(str(path), "", "", "file holds no documents")]
    return numbered, []


def _resource_label(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{doc.get('kind', '?')}/{name if isinstance(name, str) and name else '<unnamed>'}"


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


# --- The schema, as the API server applies it -----------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the kind's generated CRD."""
    return build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@functools.cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    # OpenAPI v3.0 schemas are JSON Schema draft 4 in the parts CRDs use (boolean exclusiveMinimum/Maximum).
    return jsonschema.Draft4Validator(crd_schema(kind))


def _is_quantity(schema: dict[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string")) and schema.get("pattern") == QUANTITY_PATTERN


def _schema_message(error: jsonschema.ValidationError) -> str:
    """The one-line message of a schema error, in the words `validate` uses everywhere."""
    keyword, value, schema = error.validator, error.instance, error.schema
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if keyword == "anyOf" and schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, float):
            return f'must be an integer or a string, not the number {value!r}: write "{quantity_text(value)}"'
        return f"must be an integer or a string (got {shown})"
    if keyword == "pattern" and _is_quantity(schema):
        return f"{value!r} {QUANTITY_HINT}"
    if keyword == "type":
        wanted = {
            "integer": "an integer",
            "number": "a number",
            "string": "a string",
            "boolean": "true or false",
            "object": "a mapping",
            "array": "a list",
        }
        expected = wanted.get(error.validator_value, f"of type {error.validator_value}")
        return f"must be {expected} (got {shown})"
    if keyword == "enum":
        options = [repr(o) for o in error.validator_value]
        choice = f"{', '.join(options[:-1])} or {options[-1]}" if len(options) > 1 else options[0]
        return f"must be {choice} (got {shown})"
    if keyword in ("minimum", "maximum"):
        exclusive = schema.get("exclusiveMinimum" if keyword == "minimum" else "exclusiveMaximum") is True
        word = {
            ("minimum", False): "at least",
            ("minimum", True): "greater than",
            ("maximum", False): "at most",
            ("maximum", True): "less than",
        }[(keyword, exclusive)]
        return f"must be {word} {error.validator_value} (got {shown})"
    if keyword == "maxProperties" and error.validator_value == 0:
        return "takes no parameters: write {}"
    if keyword in ("maxLength", "minLength"):
        word = "at most" if keyword == "maxLength" else "at least"
        return f"must be {word} {error.validator_value} characters long"
    if keyword in ("maxItems", "minItems"):
        word = "at most" if keyword == "maxItems" else "at least"
        return f"must have {word} {error.validator_value} items (got {len(value)})"
    if keyword == "pattern":
        return f"{shown} does not match {error.validator_value}"
    return error.message


def schema_problems(kind: str, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) for every schema violation and every field the API server would prune."""
    found: list[tuple[str, str]] = []
    meta = doc.get("metadata")
    if meta is None or (isinstance(meta, dict) and not meta.get("name")):
        # The server names every object before it validates it (metadata.name, or one from generateName).
        found.append(("metadata.name" if isinstance(meta, dict) else "metadata", "required field is missing"))
    for error in _validator(kind).iter_errors(doc):
        path = ""
        for part in error.absolute_path:
            path = _join(path, part)
        if error.validator == "required":
            missing = re.match(r"'([^']+)'", error.message)
            found.append((_join(path, missing.group(1)) if missing else path, "required field is missing"))
        else:
            found.append((path, _schema_message(error)))
    found.extend(_unknown_fields(doc, crd_schema(kind), ""))
    return sorted(found, key=lambda p: p[0])


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """Fields the API server would drop (pruning): keys an object schema neither declares nor preserves."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if path == "metadata" or (not props and not isinstance(extra, dict)):
            return  # ObjectMeta is the server's own; a schema-less object is reported by its type
        for key, sub in value.items():
            child = _join(path, key)
            if props and key in props:
                yield from _unknown_fields(sub, props[key], child)
            elif isinstance(extra, dict):
                yield from _unknown_fields(sub, extra, child)
            else:
                yield child, _unknown_field_message(str(key), list(props or {}))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{i}]")


def _unknown_field_message(key: str, known: list[str]) -> str:
    lowered = {k.lower(): k for k in known}
    guess = [lowered[key.lower()]] if key.lower() in lowered else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f'unknown field (did you mean "{guess[0]}"?)' if guess else "unknown field"


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The object after the API server's structural defaulting: a copy with every absent property that has a default
    set to it, top-down (a defaulted object gets its own properties' defaults too); nulls count as absent."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = {k: v for k, v in value.items() if v is not None}
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        for key, item in out.items():
            if key in props:
                out[key] = apply_defaults(item, props[key])
            elif isinstance(extra, dict):
                out[key] = apply_defaults(item, extra)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


# --- CEL rules ------------------------------------------------------------------------------------------------------


def to_cel(value: Any, schema: dict[str, Any]) -> Any:
    """A JSON value as the API server hands it to CEL: typed by its schema (an integer in a `number` field is a
    double), unknown fields left out."""
    kind = schema.get("type")
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        typed = {}
        for key, item in value.items():
            sub = props.get(key) if props else (extra if isinstance(extra, dict) else None)
            if sub is not None:
                typed[celpy.celtypes.StringType(key)] = to_cel(item, sub)
        return celpy.celtypes.MapType(typed)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return celpy.celtypes.ListType([to_cel(item, schema["items"]) for item in value])
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return celpy.celtypes.DoubleType(value)
    return celpy.json_to_cel(value)


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled CEL rule of a CRD and the schema node it sits on."""

    path: tuple[str, ...]  # property names from the root; "[]" for list items, "{}" for map values
    rule: str
    message: str
    schema: dict[str, Any] = field(compare=False, hash=False, repr=False)
    program: Any = field(compare=False, hash=False, repr=False)

    @functools.cached_property
    def fields_read(self) -> frozenset[str] | None:
        """The top-level fields of self the rule reads, or None when it uses self as a whole."""
        if re.search(r"\bself\b(?!\s*\.)", self.rule):
            return None
        return frozenset(re.findall(r"\bself\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)", self.rule))

    @property
    def field_path(self) -> tuple[str, ...]:
        """Where a failure is reported below the node: the one field the rule reads, when it reads only one."""
        fields = set(re.findall(r"\bself((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", self.rule))
        if len(fields) == 1:
            return tuple(fields.pop().lstrip(".").split("."))
        return ()


def rules_of(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, schema node) of every node carrying x-kubernetes-validations, root first."""
    if schema.get("x-kubernetes-validations"):
        yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from rules_of(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        yield from rules_of(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from rules_of(schema["additionalProperties"], (*path, "{}"))


@functools.cache
def _cel_env() -> celpy.Environment:
    return celpy.Environment()


def compile_rule(rule: str) -> Any:
    """A runnable program of one CEL rule; raises celpy's CELParseError when it does not compile."""
    env = _cel_env()
    return env.program(env.compile(rule))


def with_object_meta(root: dict[str, Any]) -> dict[str, Any]:
    """The root schema as the server's CEL sees it: apiVersion, kind, metadata.name and metadata.generateName
    declared (apiextensions-apiserver's WithTypeAndObjectMeta); the rest of metadata is not visible to rules."""
    string = {"type": "string"}
    meta = {"type": "object", "properties": {"name": string, "generateName": string}}
    props = {**root.get("properties", {}), "apiVersion": string, "kind": string, "metadata": meta}
    return {**root, "properties": props}


@functools.cache
def _cel_rules(kind: str) -> list[Rule]:
    """Every CEL rule in the kind's CRD, compiled."""
    return [
        Rule(
            path,
            r["rule"],
            r.get("message") or f"failed rule: {r['rule']}",
            with_object_meta(node) if not path else node,
            compile_rule(r["rule"]),
        )
        for path, node in rules_of(crd_schema(kind))
        for r in node["x-kubernetes-validations"]
    ]


def _values_at(obj: Any, path: tuple[str, ...], shown: str = "") -> Iterator[tuple[str, Any]]:
    if not path:
        yield shown, obj
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from _values_at(item, rest, f"{shown}[{i}]")
    elif head == "{}":
        if isinstance(obj, dict):
            for key, item in obj.items():
                yield from _values_at(item, rest, _join(shown, str(key)))
    elif isinstance(obj, dict) and head in obj:
        yield from _values_at(obj[head], rest, _join(shown, head))


def evaluate_rule(rule: Rule, value: Any) -> bool:
    """Whether the value satisfies the rule; raises celpy's CELEvalError when the rule cannot be evaluated on it."""
    if isinstance(value, dict) and rule.fields_read is not None:
        value = {key: item for key, item in value.items() if key in rule.fields_read}  # convert only what it reads
    result = rule.program.evaluate({"self": to_cel(value, rule.schema)})
    if isinstance(result, Exception):
        raise result
    return bool(result)


def cel_problems(kind: str, wire: dict[str, Any], broken: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(field path, message) for every CEL rule of the kind's CRD that the object breaks once the API server has
    defaulted it; a rule that cannot be evaluated is reported unless a schema problem at or below it (broken)
    already explains why."""
    broken = list(broken)
    defaulted = apply_defaults(wire, crd_schema(kind))
    found = []
    for rule in _cel_rules(kind):
        for shown, value in _values_at(defaulted, rule.path):
            if rule.schema.get("type") == "object" and not isinstance(value, dict):
                continue  # a type error, reported by the schema; the server runs no rules on it
            try:
                ok = evaluate_rule(rule, value)
            except Exception as exc:
                if not any(_overlaps(shown, b) for b in broken):
                    found.append((shown, f"rule {rule.rule!r} could not be evaluated: {exc}"))
                continue
            if not ok:
                where = shown
                for part in rule.field_path:
                    where = _join(where, part)
                found.append((where, rule.message))
    return found


def _overlaps(a: str, b: str) -> bool:
    """Whether one field path is the other or inside it."""
    return a == b or not a or not b or b.startswith((f"{a}.", f"{a}[")) or a.startswith((f"{b}.", f"{b}["))


# --- Deeper checks ----------------------------------------------------------------------------------------------------


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part in {"int", "float", "str", "bool"} or "[" in part):
            continue  # pydantic's union-member tags, not part of the field path
        else:
            out += f".{part}" if out else part
    return out


def _format_error(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx", {})
    value = err.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        word = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
        }.get(kind, "at most")
        bound = next(iter(ctx.values()))
        return f"must be {word} {bound} (got {value!r})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = err["msg"]
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be ") :]
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{msg} (got {shown})"


def model_problems(kind: str, doc: dict[str, Any]) -> tuple[ApiModel | None, list[tuple[str, str]]]:
    """The typed resource and what the operator would refuse: the API model's checks, then the operator's own."""
    from .builders.validation import operator_problems  # the builders import this module

    try:
        resource = RESOURCE_MODELS[kind].model_validate(doc)
    except ValidationError as exc:
        return None, [(_format_loc(e["loc"]), _format_error(e)) for e in exc.errors()]
    return resource, operator_problems(resource)


# --- One document, many documents -----------------------------------------------------------------------------------


def migration_problems(kind: str, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """[(section path, message)] for sections written in an older form of the API (today: TrainingJob's spec.model
    before the Hugging Face model layer), each with the one line that says how to rewrite it."""
    spec = doc.get("spec")
    if kind != "TrainingJob" or not isinstance(spec, dict):
        return []
    message = legacy_model_message(spec.get("model"))
    return [("spec.model", message.split(": ", 1)[1])] if message else []


def drop_nulls(value: Any) -> Any:
    """The value without null fields: the server prunes nulls of fields that are not nullable (none of ours are)
    before it defaults and validates."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def judge(kind: str, doc: dict[str, Any], admitted: bool = False) -> tuple[ApiModel | None, list[tuple[str, str]]]:
    """(typed resource or None, [(field path, message)]) for one document of a kubeforge kind, every problem at once:
    what the API server would reject, then what the operator would. admitted: the document comes from the API
    server, which checked the CRD's schema and CEL rules when it stored it, so those two passes are skipped."""
    doc = drop_nulls(doc)
    found = migration_problems(kind, doc)
    if not admitted:
        # A section written for an older API gets its migration line instead of one "unknown field" per old name.
        found += [(p, m) for p, m in schema_problems(kind, doc) if not any(_overlaps(p, r) for r, _ in found)]
        found += cel_problems(kind, doc, broken=[p for p, _ in found])
    resource, deeper = model_problems(kind, doc)
    reported = [p for p, _ in found]
    found += [(p, m) for p, m in deeper if not any(_overlaps(p, r) for r in reported)]
    return (resource if not found else None), found


def validate_document(
    source: str, doc: Any, strict: bool = True, admitted: bool = False
) -> tuple[ApiModel | None, list[Problem]]:
    """Validate one parsed document; returns the typed resource when it is valid.

    A document of another API group is a problem when strict, and otherwise neither valid nor a problem (None, []).
    admitted: read from the API server, which enforced the CRD's schema and CEL rules (see judge).
    """
    if not isinstance(doc, dict):
        return None, [Problem(source, "", "", f"document is a {type(doc).__name__}, not a mapping")]
    label = _resource_label(doc)
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if not kind:
        return None, [Problem(source, label, "kind", "required field is missing")]
    if kind not in RESOURCE_MODELS:
        ours = isinstance(api_version, str) and api_version.split("/")[0] == GROUP
        if not ours and not strict:
            return None, []
        known = ", ".join(RESOURCE_MODELS)
        return None, [Problem(source, label, "kind", f"unknown kind {kind!r} (kubeforge kinds: {known})")]
    if api_version != API_VERSION:
        hint = f"{GROUP} serves {API_VERSION}" if api_version else "required field is missing"
        return None, [Problem(source, label, "apiVersion", f"got {api_version!r}; {hint}")]
    # Status belongs to the status subresource: the server ignores it on create and update.
    document = {key: value for key, value in doc.items() if key != "status"}
    resource, found = judge(kind, document, admitted=admitted)
    return resource, [Problem(source, label, path, message) for path, message in found]


def validate_paths(paths: Iterable[str | Path], strict: bool = False) -> Report:
    """Validate every manifest under the given files and directories; other kinds are skipped unless strict."""
    report = Report()
    files, report.problems = manifest_files(paths)
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        docs, problems = load_documents(path)
        report.problems.extend(problems)
        for source, doc, duplicates in docs:
            label = _resource_label(doc) if isinstance(doc, dict) else ""
            resource, problems = validate_document(source, doc, strict=strict)
            if resource is None and not problems and not duplicates:
                report.skipped.append((source, label))
                continue
            report.problems.extend(Problem(source, label, p, m) for p, m in duplicates)
            report.problems.extend(problems)
            if resource is None or duplicates:
                continue
            key = (doc["kind"], doc["metadata"].get("namespace") or "", doc["metadata"]["name"])
            if key in seen:
                msg = f"duplicate {doc['kind']} named {key[2]!r} (also in {seen[key]})"
                report.problems.append(Problem(source, label, "metadata.name", msg))
                continue
            seen[key] = source
            report.manifests.append(Manifest(source, doc, resource))
    return report
