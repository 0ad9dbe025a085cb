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


def one_of(*fields: str) -> dict[str, str]:
    """The exactly_one rule over the fields, with the message naming them."""
    return cel(exactly_one(*fields), f"set exactly one of {', '.join(fields)}")


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


RESERVED_VOLUME_PREFIX = "kf-"
"""Names of the volumes kubeforge adds to Ray pods start with this."""
TMP_VOLUME, HOME_VOLUME, SHM_VOLUME = "kf-tmp", "kf-home", "kf-dshm"
"""The emptyDirs every Ray pod has (/tmp, the image user's HOME, /dev/shm); spec.pod.volumeMounts may mount them too."""


class SecretOrConfigMapKey(ApiModel):
    """One key of a Secret or ConfigMap in the resource's namespace."""

    name: str = Field(max_length=253, description="Name of the Secret or ConfigMap.")
    key: str = Field(max_length=253, description="The key whose value is used.")
    optional: bool | None = Field(default=None, description="Start the pod even if the object or key is missing.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    model_config = cel_rules(one_of("secretKeyRef", "configMapKeyRef"))

    secret_key_ref: SecretOrConfigMapKey | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: SecretOrConfigMapKey | None = Field(default=None, description="A key of a ConfigMap.")


class EnvVar(ApiModel):
    """An environment variable of every Ray container (Kubernetes EnvVar: a value, or one from a Secret/ConfigMap)."""

    model_config = cel_rules(one_of("value", "valueFrom"))

    name: str = Field(max_length=253, description="Name of the variable.")
    value: str | None = Field(default=None, max_length=32768, description="Its value.")
    value_from: EnvVarSource | None = Field(default=None, description="Where its value comes from.")


class ObjectRef(ApiModel):
    """A Secret or ConfigMap in the resource's namespace."""

    name: str = Field(max_length=253, description="Its name.")
    optional: bool | None = Field(default=None, description="Start the pod even if it is missing.")


class EnvFromSource(ApiModel):
    """All keys of a Secret or ConfigMap as environment variables, e.g. a Secret holding AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY for an S3 or MinIO bucket."""

    model_config = cel_rules(one_of("secretRef", "configMapRef"))

    prefix: str | None = Field(default=None, max_length=253, description="Prefix added to every variable name.")
    secret_ref: ObjectRef | None = Field(default=None, description="The Secret.")
    config_map_ref: ObjectRef | None = Field(default=None, description="The ConfigMap.")


class KeyToPath(ApiModel):
    """One key of a Secret or ConfigMap projected into a file."""

    key: str = Field(max_length=253, description="The key.")
    path: str = Field(max_length=4096, description="Relative path of the file.")


class SecretVolumeSource(ApiModel):
    """A Secret as files."""

    secret_name: str = Field(max_length=253, description="Name of the Secret.")
    items: list[KeyToPath] | None = Field(default=None, description="Keys to project; unset projects every key.")
    optional: bool | None = Field(default=None, description="Start the pod even if the Secret is missing.")


class ConfigMapVolumeSource(ApiModel):
    """A ConfigMap as files."""

    name: str = Field(max_length=253, description="Name of the ConfigMap.")
    items: list[KeyToPath] | None = Field(default=None, description="Keys to project; unset projects every key.")
    optional: bool | None = Field(default=None, description="Start the pod even if the ConfigMap is missing.")


class EmptyDirVolumeSource(ApiModel):
    """A scratch directory that lives as long as the pod."""

    medium: Literal["", "Memory"] | None = Field(default=None, description="Memory for a tmpfs; empty for disk.")
    size_limit: Quantity | None = Field(default=None, description="Largest size it may grow to.")


class PvcVolumeSource(ApiModel):
    """A PersistentVolumeClaim in the resource's namespace."""

    claim_name: str = Field(max_length=253, description="Name of the claim.")
    read_only: bool | None = Field(default=None, description="Mount it read-only.")


class Volume(ApiModel):
    """A volume of every Ray pod: a Secret, ConfigMap, emptyDir or PersistentVolumeClaim."""

    model_config = cel_rules(
        one_of("secret", "configMap", "emptyDir", "persistentVolumeClaim"),
        cel(
            f"!(self.name).startsWith('{RESERVED_VOLUME_PREFIX}')",
            f"names starting with {RESERVED_VOLUME_PREFIX} are kubeforge's own volumes",
        ),
    )

    name: DnsLabel = Field(max_length=63, description="Name of the volume, referred to by volumeMounts.")
    secret: SecretVolumeSource | None = Field(default=None, description="A Secret as files.")
    config_map: ConfigMapVolumeSource | None = Field(default=None, description="A ConfigMap as files.")
    empty_dir: EmptyDirVolumeSource | None = Field(default=None, description="A scratch directory.")
    persistent_volume_claim: PvcVolumeSource | None = Field(default=None, description="A PersistentVolumeClaim.")


class VolumeMount(ApiModel):
    """Where a volume appears in every Ray container."""

    name: str = Field(max_length=63, description="Name of a volume in volumes.")
    mount_path: str = Field(max_length=4096, description="Absolute path in the container.")
    read_only: bool | None = Field(default=None, description="Mount it read-only.")
    sub_path: str | None = Field(default=None, max_length=4096, description="A path inside the volume to mount.")


class Capabilities(ApiModel):
    """Linux capabilities to add or drop."""

    add: list[str] | None = Field(default=None, description="Capabilities to add (restricted allows NET_BIND_SERVICE).")
    drop: list[str] | None = Field(default=None, description="Capabilities to drop.")


class SeccompProfile(ApiModel):
    """The seccomp profile of a container."""

    type: Literal["RuntimeDefault", "Localhost", "Unconfined"] = Field(description="Which profile.")
    localhost_profile: str | None = Field(default=None, description="Path of a Localhost profile on the node.")


class SecurityContext(ApiModel):
    """Container security settings; each field set here replaces the same field of kubeforge's default (the Pod
    Security Standards' restricted profile with a read-only root filesystem)."""

    run_as_user: int | None = Field(default=None, ge=0, description="UID the container runs as.")
    run_as_group: int | None = Field(default=None, ge=0, description="GID the container runs as.")
    run_as_non_root: bool | None = Field(default=None, description="Refuse to start a container running as root.")
    read_only_root_filesystem: bool | None = Field(default=None, description="Mount the root filesystem read-only.")
    allow_privilege_escalation: bool | None = Field(default=None, description="Allow setuid and the like.")
    capabilities: Capabilities | None = Field(default=None, description="Capabilities to add or drop.")
    seccomp_profile: SeccompProfile | None = Field(default=None, description="The seccomp profile.")


class PodOverrides(ApiModel):
    """What a resource adds to or changes in every Ray container and pod kubeforge creates for it."""

    model_config = cel_rules(
        cel(
            # (self.x).f(...): a macro on a field, parenthesised so that rule checkers reading self.a.b chains as
            # field paths stop at the field.
            "!has(self.volumeMounts) || (self.volumeMounts).all(m, "
            f"m.name in {[TMP_VOLUME, HOME_VOLUME, SHM_VOLUME]!r} "
            "|| (has(self.volumes) && (self.volumes).exists(v, v.name == m.name)))",
            "every volumeMounts[].name must name one of volumes",
        )
    )

    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Environment variables; one named like kubeforge's own replaces it.",
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=64,
        description="Secrets or ConfigMaps whose keys become environment variables (e.g. S3 credentials).",
    )
    volumes: list[Volume] = Field(default_factory=list, max_length=64, description="Extra volumes of every Ray pod.")
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=64, description="Where the volumes are mounted."
    )
    security_context: SecurityContext | None = Field(
        default=None, description="Changes to the containers' default (restricted) security context."
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
    pod: PodOverrides = Field(
        default_factory=PodOverrides,
        description="Environment, Secrets, volumes and security settings added to every Ray pod.",
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
