"""Parse a resource body into its typed model and find what the operator cannot run (pure).

The API server checks the CRD schema and its CEL rules when it stores an object (CEL validation is on by default
since Kubernetes 1.25 and GA since 1.29), so the operator, which only reads stored objects, does not repeat them:
it checks what the schema cannot express (quantities, DNS names: the API model) and what needs the operator's own
knowledge. `kubeforge validate` and the local runner, which see manifests no server has checked, run every pass
(kubeforge.validate). Every problem becomes one line naming the resource and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import DataPipeline, ModelDeployment, TrainingJob
from ..api.common import ApiModel
from ..api.trainingjob import evaluation_metrics
from ..validate import validate_document

Resource = DataPipeline | TrainingJob | ModelDeployment

# Evaluation always yields the loss, whatever spec.evaluation.metrics lists.
ALWAYS_COMPUTED_METRICS = frozenset({"loss"})


def resource_label(body: Mapping[str, Any]) -> str:
    """`Kind namespace/name` of a body, for messages."""
    meta = body.get("metadata") or {}
    return f"{body.get('kind', '?')} {meta.get('namespace') or 'default'}/{meta.get('name') or '<unnamed>'}"


def operator_problems(resource: ApiModel) -> list[tuple[str, str]]:
    """(field path, message) for specs the schema admits but the operator cannot run."""
    problems: list[tuple[str, str]] = []
    if isinstance(resource, TrainingJob):
        spec = resource.spec
        if spec.model.lora is not None and spec.model.pretrained is None:
            problems.append(("spec.model.lora", "LoRA adapts pretrained weights: set spec.model.pretrained"))
        computed = ALWAYS_COMPUTED_METRICS | set(evaluation_metrics(spec))
        stopping = spec.evaluation.early_stopping
        if stopping is not None and stopping.metric not in computed:
            problems.append(
                (
                    "spec.evaluation.earlyStopping.metric",
                    f"{stopping.metric!r} is not computed: add it to spec.evaluation.metrics",
                )
            )
        if spec.evaluation.best_metric not in computed:
            problems.append(
                (
                    "spec.evaluation.bestMetric",
                    f"{spec.evaluation.best_metric!r} is not computed: add it to spec.evaluation.metrics",
                )
            )
    elif isinstance(resource, ModelDeployment):
        spec = resource.spec
        if spec.quantization == "int8" and spec.resources.gpu:
            problems.append(
                ("spec.quantization", "int8 quantisation serves on CPU only: set spec.resources.gpu to 0 or use none")
            )
    return problems


def parse_resource(body: Mapping[str, Any]) -> tuple[Resource | None, str | None]:
    """The typed resource of a body read from the API server, or None and a one-line message naming the resource
    and every bad field."""
    # Status is the operator's and the workload's; only what the user wrote is validated.
    document = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    label = resource_label(body)
    resource, problems = validate_document(label, document, admitted=True)
    found = [(p.path, p.message) for p in problems]
    if resource is not None:
        found = operator_problems(resource)
    if not found:
        return resource, None  # type: ignore[return-value]
    details = "; ".join(f"{path}: {message}" if path else message for path, message in found)
    return None, f"{label}: {details}"
