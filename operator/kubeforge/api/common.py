"""Types shared by the three kinds: metadata, scheduling fields, resources, conditions and status basics."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

# The grammar of a Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity; the pattern controller-gen
# writes for it), without a sign: kubeforge sizes are never negative. The CRD carries it, so the API server checks it.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Child objects carry the resource's name as a label value (at most 63 characters), so the name may be no longer.
MAX_NAME_LENGTH = 63
NAME_LENGTH_RULE = {
    "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: child objects carry it as a label value",
}


def cel(rule: str, message: str) -> dict[str, str]:
    """One CEL cross-field rule, as written into the CRD's `x-kubernetes-validations`."""
    return {"rule": rule, "message": message}


def cel_rules(*rules: dict[str, str]) -> ConfigDict:
    """Model config carrying CEL rules; the CRD generator copies them and `kubeforge validate` evaluates them."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


def exactly_one(*fields: str) -> str:
    """A CEL rule that exactly one of the (camelCase) fields is set, in forms the API server's cost estimator accepts.

    `has(a) != has(b)` is estimated over the budget by a factor of 100 (seen on a real API server); the same logic
    with `&&` / `||`, and `exists_one` over a list literal of `has()`, were accepted.
    """
    present = [f"has(self.{f})" for f in fields]
    if len(fields) == 2:
        a, b = present
        return f"({a} && !{b}) || (!{a} && {b})"
    return "[" + ", ".join(present) + "].exists_one(x, x)"


def at_most(low: str, high: str, strict: bool = False) -> str:
    """A CEL rule that optional field low is at most (or, strict, below) optional field high when both are set."""
    op = "<" if strict else "<="
    return f"!has(self.{low}) || !has(self.{high}) || self.{low} {op} self.{high}"


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    if isinstance(value, int) and value < 0:
        raise ValueError("must not be negative")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
"""A Kubernetes resource quantity such as `2`, `"500m"` or `"4Gi"`: an integer or a string, never a float (the API
server rejects `0.5`: write `"500m"`)."""


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL_RE.match(value):
        raise ValueError(
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
            "with a letter or digit, at most 63 characters"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata kubeforge reads; other metadata fields pass through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: DnsLabel = Field(description="Name of the resource; child objects are named after it.")
    namespace: str | None = Field(default=None, description="Namespace of the resource.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the resource.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the resource.")


class Toleration(ApiModel):
    """A Kubernetes toleration, passed through to the Ray pods."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="How long a NoExecute taint is tolerated, in seconds.",
    )


class CommonSpec(ApiModel):
    """Scheduling and lifecycle fields every kind accepts."""

    image: str | None = Field(
        default=None,
        description="Container image for the Ray pods; defaults to the operator's trainer image.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the Ray pods must match (e.g. a GPU node pool).",
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for the Ray pods.")
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the Ray pods.")
    service_account_name: str | None = Field(
        default=None,
        description="ServiceAccount of the Ray pods; defaults to the chart's workload account, "
        "which may only patch the status of kubeforge resources.",
    )
    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue to admit the workload through (label kueue.x-k8s.io/queue-name).",
    )
    suspend: bool = Field(
        default=False,
        description="Suspend the workload: no Ray pods run while true; false resumes it.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Seconds after a job finishes before its Ray cluster is deleted (jobs only; 0 deletes at once).",
    )


class WorkerResources(ApiModel):
    """Size of each Ray worker."""

    cpu: Quantity = Field(default=1, description="CPU cores requested per worker (a Kubernetes quantity).")
    memory: Quantity = Field(
        default="2Gi",
        description="Memory requested per worker (a Kubernetes quantity).",
    )
    gpu: int = Field(default=0, ge=0, description="GPUs (nvidia.com/gpu) requested per worker.")


class Condition(ApiModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Type of the condition, e.g. Ready, Progressing, Failed, DataReady.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(default="", description="Human-readable detail of the last transition.")
    last_transition_time: str | None = Field(
        default=None, description="When the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None,
        description="The .metadata.generation the condition was set against.",
    )


Phase = Literal[
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
    "Ready",
    "Deploying",
    "Degraded",
]


class CommonStatus(ApiModel):
    """Status fields every kind reports."""

    phase: Phase | None = Field(default=None, description="Where the resource is in its life.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    start_time: str | None = Field(default=None, description="When the workload started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the workload finished (RFC 3339).")
    message: str | None = Field(default=None, description="Last human-readable status message.")
    child_name: str | None = Field(default=None, description="Name of the child RayJob or RayService.")
    retries: int = Field(default=0, ge=0, description="Times the workload was re-run after a failure.")
    last_progress_time: str | None = Field(
        default=None, description="When the workload last reported progress (RFC 3339)."
    )


_QUANTITY_VALUE = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: int | float | str) -> float:
    """A Kubernetes quantity (2, 500m, 4Gi, 1e3) as a number."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _QUANTITY_VALUE.match(value.strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    try:
        return float(match.group(1)) * _SUFFIX[match.group(2)]
    except ValueError:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from None


def quantity_text(value: float) -> str:
    """A number written as the quantity string the API server accepts: 0.5 -> "500m", 2.0 -> "2"."""
    if float(value).is_integer():
        return str(int(value))
    milli = round(value * 1000, 6)
    if float(milli).is_integer():
        return f"{int(milli)}m"
    return f"{value:g}"
