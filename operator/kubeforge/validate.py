"""Validate kubeforge manifests offline: the typed models, then the CRDs' CEL rules — one line per error."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import yaml
from pydantic import ValidationError

from .api import RESOURCE_MODELS, ApiModel
from .api.crdgen import build_crd
from .constants import API_VERSION, GROUP

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


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

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Expand files and directories (recursively) into manifest files, sorted."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not found:
                problems.append(
                    Problem(
                        str(path),
                        "",
                        "",
                        "directory holds no .yaml, .yml or .json files",
                    )
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), "", "", "no such file or directory"))
    return files, problems


def load_documents(path: Path) -> tuple[list[tuple[str, Any]], list[Problem]]:
    """[(source label, document)] of a multi-document YAML file; empty documents are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [], [Problem(str(path), "", "", "file is not valid UTF-8")]
    except OSError as exc:
        return [], [Problem(str(path), "", "", f"cannot read file: {exc.strerror}")]
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [], [Problem(str(path), "", "", f"malformed YAML: {where}{problem}")]
    numbered = [(f"{path}" if len(docs) == 1 else f"{path}#{i + 1}", d) for i, d in enumerate(docs) if d is not None]
    if not numbered:
        return [], [Problem(str(path), "", "", "file holds no documents")]
    return numbered, []


def _resource_label(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{doc.get('kind', '?')}/{name if isinstance(name, str) and name else '<unnamed>'}"


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


@functools.cache
def _cel_rules(kind: str) -> list[tuple[tuple[str, ...], str, str, Any]]:
    """(schema path, rule, message, compiled program) for every CEL rule in the kind's CRD."""
    env = celpy.Environment()
    schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules: list[tuple[tuple[str, ...], str, str, Any]] = []

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            program = env.program(env.compile(rule["rule"]))
            rules.append((path, rule["rule"], rule["message"], program))
        for key, sub in node.get("properties", {}).items():
            walk(sub, (*path, key))
        if "items" in node:
            walk(node["items"], (*path, "[]"))

    walk(schema, ())
    return rules


def _values_at(obj: Any, path: tuple[str, ...], shown: str = "") -> Iterator[tuple[str, Any]]:
    if not path:
        yield shown, obj
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from _values_at(item, rest, f"{shown}[{i}]")
    elif isinstance(obj, dict) and head in obj:
        yield from _values_at(obj[head], rest, f"{shown}.{head}" if shown else head)


def cel_problems(kind: str, wire: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) for every CEL rule of the kind's CRD that the defaulted object breaks."""
    found = []
    for path, rule, message, program in _cel_rules(kind):
        for shown, value in _values_at(wire, path):
            try:
                ok = program.evaluate({"self": celpy.json_to_cel(value)})
            except Exception as exc:
                found.append((shown, f"rule {rule!r} could not be evaluated: {exc}"))
                continue
            if not bool(ok):
                found.append((shown, message))
    return found


def validate_document(source: str, doc: Any) -> tuple[ApiModel | None, list[Problem]]:
    """Validate one parsed document; returns the typed resource when it is valid."""
    if not isinstance(doc, dict):
        return None, [Problem(source, "", "", f"document is a {type(doc).__name__}, not a mapping")]
    label = _resource_label(doc)
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if not kind:
        return None, [Problem(source, label, "kind", "required field is missing")]
    if kind not in RESOURCE_MODELS:
        known = ", ".join(RESOURCE_MODELS)
        return None, [
            Problem(
                source,
                label,
                "kind",
                f"unknown kind {kind!r} (kubeforge kinds: {known})",
            )
        ]
    if api_version != API_VERSION:
        hint = f"{GROUP} serves {API_VERSION}" if api_version else "required field is missing"
        return None, [Problem(source, label, "apiVersion", f"got {api_version!r}; {hint}")]
    try:
        resource = RESOURCE_MODELS[kind].model_validate(doc)
    except ValidationError as exc:
        problems = [Problem(source, label, _format_loc(e["loc"]), _format_error(e)) for e in exc.errors()]
        return None, problems
    problems = [Problem(source, label, path, msg) for path, msg in cel_problems(kind, resource.to_wire())]
    return (None, problems) if problems else (resource, [])


def validate_paths(paths: Iterable[str | Path]) -> Report:
    """Validate every manifest under the given files and directories."""
    report = Report()
    files, report.problems = manifest_files(paths)
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        docs, problems = load_documents(path)
        report.problems.extend(problems)
        for source, doc in docs:
            resource, problems = validate_document(source, doc)
            report.problems.extend(problems)
            if resource is None:
                continue
            key = (
                doc["kind"],
                doc["metadata"].get("namespace") or "",
                doc["metadata"]["name"],
            )
            if key in seen:
                msg = f"duplicate {doc['kind']} named {key[2]!r} (also in {seen[key]})"
                report.problems.append(Problem(source, _resource_label(doc), "metadata.name", msg))
                continue
            seen[key] = source
            report.manifests.append(Manifest(source, doc, resource))
    return report
