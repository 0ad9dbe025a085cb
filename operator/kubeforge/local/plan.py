"""Which resources a local run runs, in which order: references resolved, cycles and dangling names reported.

Pure functions over validated manifests. A reference (TrainingJob.spec.dataRef.name, ModelDeployment.spec.modelRef
.name, ModelDeployment.spec.canary.modelRef.name) resolves to a resource in the given manifests or, as in a cluster
where the referenced object already exists, to one an earlier local run completed (its status in the state dir).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from kubeforge.api.common import parse_quantity, quantity_text
from kubeforge.api.trainingjob import OBJECTIVE_DATA_TASK, objective_of

from ..validate import Manifest, Problem

KIND_ORDER = ("DataPipeline", "TrainingJob", "ModelDeployment")
"""The order the kinds run in when nothing else decides (data before training before serving)."""

DEFAULT_NAMESPACE = "default"

Key = tuple[str, str]
"""(kind, name) of a resource; a local run keeps one resource per kind and name."""

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Reference:
    """A field of one resource naming another."""

    field: str
    kind: str
    name: str

    @property
    def key(self) -> Key:
        """(kind, name) of the referenced resource."""
        return (self.kind, self.name)


@dataclass
class Step:
    """One resource of the run and the resources it needs first."""

    manifest: Manifest
    references: list[Reference] = field(default_factory=list)
    external: list[Reference] = field(default_factory=list)
    """The references satisfied by an earlier run rather than by a manifest of this run."""

    @property
    def kind(self) -> str:
        """Kind of the resource."""
        return self.manifest.kind

    @property
    def name(self) -> str:
        """Name of the resource."""
        return self.manifest.name

    @property
    def key(self) -> Key:
        """(kind, name)."""
        return (self.kind, self.name)

    @property
    def label(self) -> str:
        """Kind/name, as in error messages and kubectl."""
        return f"{self.kind}/{self.name}"


class CycleError(ValueError):
    """The dependency graph has a cycle; .cycle lists it, first node repeated at the end."""

    def __init__(self, cycle: Sequence[Hashable]) -> None:
        super().__init__(" -> ".join(map(str, cycle)))
        self.cycle = list(cycle)


def references_of(manifest: Manifest) -> list[Reference]:
    """The references a resource makes to other kubeforge resources."""
    spec = manifest.resource.spec
    found: list[Reference] = []
    if manifest.kind == "TrainingJob" and spec.data_ref.name:
        found.append(Reference("spec.dataRef.name", "DataPipeline", spec.data_ref.name))
    if manifest.kind == "ModelDeployment":
        if spec.model_ref is not None:
            found.append(Reference("spec.modelRef.name", "TrainingJob", spec.model_ref.name))
        if spec.canary is not None and spec.canary.model_ref is not None:
            found.append(Reference("spec.canary.modelRef.name", "TrainingJob", spec.canary.model_ref.name))
    return found


def topological_order(nodes: Sequence[K], needs: Mapping[K, Iterable[K]]) -> list[K]:
    """Nodes ordered so each comes after everything it needs; ties keep the given order. Raises CycleError."""
    position = {node: i for i, node in enumerate(nodes)}
    pending = {node: {n for n in needs.get(node, ()) if n in position} for node in nodes}
    order: list[K] = []
    while pending:
        ready = [node for node in pending if not pending[node]]
        if not ready:
            raise CycleError(_find_cycle(pending))
        first = min(ready, key=position.__getitem__)
        order.append(first)
        del pending[first]
        for waiting in pending.values():
            waiting.discard(first)
    return order


def _find_cycle(graph: Mapping[K, set[K]]) -> list[K]:
    """One cycle of a graph in which every node has an outgoing edge (walk until a node repeats)."""
    path: list[K] = [min(graph, key=str)]
    while True:
        nxt = min(graph[path[-1]], key=str)
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)


def _problem(manifest: Manifest, path: str, message: str) -> Problem:
    return Problem(manifest.source, f"{manifest.kind}/{manifest.name}", path, message)


def _namespace(manifest: Manifest) -> str:
    return manifest.raw.get("metadata", {}).get("namespace") or DEFAULT_NAMESPACE


def _cross_checks(step: Step, by_key: Mapping[Key, Manifest]) -> list[Problem]:
    """Problems only visible across two resources (a cluster would hit them when the job starts)."""
    problems = []
    if step.kind == "TrainingJob":
        spec = step.manifest.resource.spec
        data = by_key.get(("DataPipeline", spec.data_ref.name or ""))
        objective = objective_of(spec)  # sft trains on chat data, dpo on preference data
        if data is not None and data.resource.spec.tokenizer.task != OBJECTIVE_DATA_TASK[objective]:
            problems.append(
                _problem(
                    step.manifest,
                    "spec.objective" if spec.objective else "spec.model.task",
                    f"is {objective!r} but DataPipeline/{data.name} prepares "
                    f"{data.resource.spec.tokenizer.task!r} data (spec.tokenizer.task)",
                )
            )
    return problems


def plan_run(manifests: Sequence[Manifest], completed: Mapping[Key, str]) -> tuple[list[Step], list[Problem]]:
    """The steps in run order, or the problems that prevent the run.

    completed maps (kind, name) of resources earlier local runs know to their last phase; a reference to one that
    is not in the manifests resolves only when that phase is Succeeded.
    """
    problems: list[Problem] = []
    by_key: dict[Key, Manifest] = {}
    for manifest in manifests:
        key = (manifest.kind, manifest.name)
        if key in by_key:
            other = by_key[key]
            problems.append(
                _problem(
                    manifest,
                    "metadata.namespace",
                    f"{manifest.kind} {manifest.name!r} is also defined in {other.source} (namespace "
                    f"{_namespace(other)!r}); a local run holds one {manifest.kind} per name, so references to it "
                    "would be ambiguous",
                )
            )
            continue
        by_key[key] = manifest

    steps: dict[Key, Step] = {}
    for key, manifest in by_key.items():
        step = Step(manifest, references_of(manifest))
        for ref in step.references:
            target = by_key.get(ref.key)
            if target is not None:
                if _namespace(target) != _namespace(manifest):
                    problems.append(
                        _problem(
                            manifest,
                            ref.field,
                            f"{ref.kind} {ref.name!r} is in namespace {_namespace(target)!r}, not "
                            f"{_namespace(manifest)!r}; references stay within a namespace",
                        )
                    )
                continue
            phase = completed.get(ref.key)
            if phase == "Succeeded":
                step.external.append(ref)
                continue
            earlier = f"; its last local run ended {phase}" if phase else ""
            problems.append(
                _problem(
                    manifest,
                    ref.field,
                    f"{ref.kind} {ref.name!r} not found: it is not in the given manifests and no earlier "
                    f"`kubeforge run` completed it{earlier} (add its manifest to the run)",
                )
            )
        problems.extend(_cross_checks(step, by_key))
        steps[key] = step

    if problems:
        return [], problems
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    keys = sorted(steps, key=lambda k: rank[k[0]])  # stable: file order within a kind
    needs = {key: [ref.key for ref in step.references if ref not in step.external] for key, step in steps.items()}
    try:
        order = topological_order(keys, needs)
    except CycleError as exc:
        first = steps[exc.cycle[0]]
        cycle = " -> ".join(f"{k}/{n}" for k, n in exc.cycle)
        return [], [_problem(first.manifest, "", f"references form a cycle: {cycle}")]
    return [steps[key] for key in order], []


def capacity_problems(manifests: Sequence[Manifest], cpus: float) -> list[Problem]:
    """Resources a local Ray of `cpus` CPUs cannot run: Ray would wait for their CPUs forever, without an error.

    Training workers must leave CPU for Ray Data, whose read tasks stream the shards to them; a deployment's
    replicas must fit at all, and a direct-ingress deployment has one replica per node.
    """
    problems = []
    for manifest in manifests:
        spec = manifest.resource.spec
        if manifest.kind == "TrainingJob":
            workers = spec.workers
            need = workers.count * parse_quantity(workers.cpu)
            if need >= cpus:
                fits = round(cpus / 2 / workers.count, 2)
                message = (
                    f"{workers.count} worker(s) x {workers.cpu} CPU take {need:g} of the {cpus:g} CPU(s) of this "
                    "local Ray and leave none for Ray Data to stream the dataset; set workers.cpu to "
                    f'"{quantity_text(fits)}" (or fewer workers, or more --num-cpus)'
                )
                problems.append(_problem(manifest, "spec.workers.cpu", message))
        elif manifest.kind == "ModelDeployment":
            replicas = max(spec.replicas.min, 1)  # each replica serves every version (stable and canary)
            need = replicas * parse_quantity(spec.resources.cpu)
            if need > cpus:
                message = (
                    f"{replicas} replica(s) x {spec.resources.cpu} CPU need {need:g} CPUs; this local Ray has "
                    f"{cpus:g} (lower resources.cpu or replicas.min, or raise --num-cpus)"
                )
                problems.append(_problem(manifest, "spec.resources.cpu", message))
            if spec.ingress == "direct" and spec.replicas.max > 1:
                # Serve places one direct-ingress replica per node, and a local run has one node.
                message = (
                    f"ingress: direct runs one replica per Ray node and this local Ray is one node; set "
                    f"replicas.max to 1 (it is {spec.replicas.max}) or use ingress: proxy"
                )
                problems.append(_problem(manifest, "spec.replicas.max", message))
    return problems
