"""Pieces every child manifest shares: names, labels, the spec hash, the resource JSON and the Ray pod templates."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from ..api.common import (
    HOME_VOLUME,
    RESERVED_VOLUME_PREFIX,
    SHM_VOLUME,
    TMP_VOLUME,
    CommonSpec,
    PodOverrides,
    WorkerResources,
    parse_quantity,
)
from ..config import OperatorConfig
from ..constants import (
    API_VERSION,
    KINDS,
    LABEL_KUEUE_QUEUE,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    MANAGED_BY_VALUE,
    PVC_MOUNT_ROOT,
    owner_label,
)

# KubeRay appends 6 characters to a RayJob / RayService name to name its RayCluster, whose name may have at most
# 53 (ray-operator/controllers/ray/utils: MaxRayJobNameLength = MaxRayServiceNameLength = 47). The names must
# also be DNS-1035 labels: they start with a letter.
MAX_RAY_NAME_LENGTH = 47

# Suffix of the RayJob per kind, so a DataPipeline and a TrainingJob of the same name never share a child.
CHILD_SUFFIX = {"DataPipeline": "data", "TrainingJob": "train", "ModelDeployment": ""}

GPU_RESOURCE = "nvidia.com/gpu"
RAY_METRICS_PORT = 8080
WORKER_GROUP = "workers"

TRAINER_HOME = "/home/kubeforge"
"""HOME of the trainer image's user (trainer_image/Dockerfile): DeepSpeed's JIT builds and library caches go there."""

RESTRICTED_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
    "readOnlyRootFilesystem": True,
}
"""Every Ray container's default security context: the Pod Security Standards' restricted profile, and a read-only
root filesystem (the writable places Ray needs are emptyDirs, WRITABLE_DIRS); spec.pod.securityContext changes it."""

WRITABLE_DIRS = {TMP_VOLUME: "/tmp", HOME_VOLUME: TRAINER_HOME}
"""emptyDirs over the read-only root: /tmp holds Ray's session directory (/tmp/ray: sockets, logs, spilled objects)
and Python's temporary files; HOME the caches of DeepSpeed (torch_extensions), numba, Triton and Hugging Face."""

SHM_SHARE = 0.5
"""/dev/shm is a memory-backed emptyDir of this share of the container's memory: Ray's object store (30% of the
memory by default, which the data step moves its blocks through), DeepSpeed's CPU shared-memory collective and torch's
DataLoader workers. Its pages count against the container's memory limit; a container runtime's default of 64 MiB would
push the object store to disk."""


def child_name(kind: str, name: str, attempt: int = 0) -> str:
    """The deterministic name of a resource's RayJob or RayService; retries get their own name."""
    parts = [name]
    if CHILD_SUFFIX[kind]:
        parts.append(CHILD_SUFFIX[kind])
    if attempt:
        parts.append(f"r{attempt}")
    full = "-".join(parts)
    if not full[0].isalpha():
        full = f"kf-{full}"
    if len(full) <= MAX_RAY_NAME_LENGTH:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    tail = "-".join(parts[1:])
    keep = MAX_RAY_NAME_LENGTH - len(digest) - len(tail) - 2
    head = full[: max(keep, 1)].rstrip("-")
    return "-".join(p for p in (head, digest, tail) if p)


# libyaml's emitter and parser when available: the pure-Python ones cost milliseconds per child.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def to_yaml(data: Any, sort_keys: bool = True) -> str:
    """YAML text of data (the RayJob's runtimeEnvYAML, the RayService's serveConfigV2); long lines are not folded."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=sort_keys, width=1 << 20)


def from_yaml(text: str) -> Any:
    """Parse YAML text."""
    return yaml.load(text, Loader=_LOADER)


MAX_OBJECT_NAME_LENGTH = 253  # ServiceAccount, Role and RoleBinding names are DNS subdomains


def run_access_name(kind: str, name: str) -> str:
    """The name of a run's ServiceAccount, Role and RoleBinding: kubeforge-<short kind>-<name>, hashed when long."""
    full = f"kubeforge-{KINDS[kind][2]}-{name}"
    if len(full) <= MAX_OBJECT_NAME_LENGTH:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_OBJECT_NAME_LENGTH - 9]}-{digest}"


def run_service_account(kind: str, name: str, spec_service_account: str | None) -> str:
    """The ServiceAccount of a run's Ray pods: spec.serviceAccountName when set, else the run's own."""
    return spec_service_account or run_access_name(kind, name)


def child_labels(kind: str, name: str, queue_name: str | None = None) -> dict[str, str]:
    """Labels of every child object: who manages it, which resource owns it, and the Kueue queue."""
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY_VALUE,
        LABEL_PART_OF: MANAGED_BY_VALUE,
        owner_label(kind): name,
    }
    if queue_name:
        labels[LABEL_KUEUE_QUEUE] = queue_name
    return labels


# (pod volume, container volumeMount)
Volume = tuple[dict[str, Any], dict[str, Any]]


def pvc_volume(claim_name: str) -> Volume:
    """A PersistentVolumeClaim mounted read-only at PVC_MOUNT_ROOT/<claim name>."""
    name = f"{RESERVED_VOLUME_PREFIX}source"
    volume = {"name": name, "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True}}
    mount = {"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim_name}", "readOnly": True}
    return volume, mount


def shm_size(memory: int | float | str) -> str:
    """The size limit of /dev/shm for a container with this memory (SHM_SHARE of it, in whole MiB)."""
    return f"{max(64, math.floor(parse_quantity(memory) * SHM_SHARE / 2**20))}Mi"


def runtime_volumes(memory: int | float | str) -> tuple[Volume, ...]:
    """The emptyDirs every Ray container gets: the writable directories and a memory-backed /dev/shm."""
    volumes = [
        ({"name": name, "emptyDir": {}}, {"name": name, "mountPath": path}) for name, path in WRITABLE_DIRS.items()
    ]
    shm = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(memory)}}
    volumes.append((shm, {"name": SHM_VOLUME, "mountPath": "/dev/shm"}))
    return tuple(volumes)


def security_context(overrides: PodOverrides) -> dict[str, Any]:
    """A Ray container's security context: RESTRICTED_SECURITY_CONTEXT with the fields spec.pod.securityContext sets
    replaced."""
    context = json.loads(json.dumps(RESTRICTED_SECURITY_CONTEXT))
    if overrides.security_context is not None:
        context.update(overrides.security_context.to_wire())
    return context


def pod_security_context(container: Mapping[str, Any]) -> dict[str, Any]:
    """The pod-level security context: the container's non-root and seccomp settings, so that policies checking
    either level see them."""
    keep = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    return {key: container[key] for key in keep if key in container}


def container_env(env: Mapping[str, str] | None, overrides: PodOverrides) -> list[dict[str, Any]]:
    """kubeforge's variables, then spec.pod.env; a variable of the spec replaces kubeforge's of the same name."""
    own = {name: {"name": name, "value": value} for name, value in (env or {}).items()}
    for var in overrides.env:
        own.pop(var.name, None)
    return [*own.values(), *(var.to_wire() for var in overrides.env)]


def pod_labels(kind: str, name: str) -> dict[str, str]:
    """Labels of the Ray pods (selected by PodMonitors); the Kueue label belongs on the RayJob only."""
    return child_labels(kind, name)


def spec_hash(spec: Mapping[str, Any], mutable: tuple[str, ...] = ("suspend",)) -> str:
    """A short, stable hash of a spec, ignoring the fields that may change after a job started."""
    fixed = {k: v for k, v in spec.items() if k not in mutable}
    canonical = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def resource_document(kind: str, metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as a workload receives it (docs/contracts.md): apiVersion, kind, identifying metadata, spec."""
    meta = {key: metadata[key] for key in ("name", "namespace", "uid", "generation") if metadata.get(key) is not None}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": dict(spec)}


def resource_metadata(resource: Any) -> dict[str, Any]:
    """name, namespace, uid and generation of a typed resource (uid and generation are extra metadata fields)."""
    meta = resource.metadata
    extra = meta.model_extra or {}
    return {
        "name": meta.name,
        "namespace": meta.namespace,
        "uid": extra.get("uid"),
        "generation": extra.get("generation"),
    }


def quantity(value: int | float | str) -> str:
    """A Kubernetes quantity as a string (KubeRay's schema takes int-or-string; strings are unambiguous)."""
    return str(value)


def container_resources(cpu: int | float | str, memory: int | float | str, gpu: int = 0) -> dict[str, Any]:
    """Requests equal to limits, as KubeRay recommends: Ray sizes itself from the limits."""
    amounts = {"cpu": quantity(cpu), "memory": quantity(memory)}
    if gpu:
        amounts[GPU_RESOURCE] = str(gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def worker_resources(resources: WorkerResources) -> dict[str, Any]:
    """Container resources of one Ray worker."""
    return container_resources(resources.cpu, resources.memory, resources.gpu)


def pod_template(
    *,
    container_name: str,
    kind: str,
    name: str,
    spec: CommonSpec,
    config: OperatorConfig,
    labels: Mapping[str, str],
    resources: dict[str, Any],
    ports: list[dict[str, Any]],
    volumes: tuple[Volume, ...] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Ray pod template: image, resources, ports, the restricted security context with its writable emptyDirs and
    /dev/shm, spec.pod's environment, Secrets and volumes, and the scheduling fields passed through from the spec."""
    overrides = spec.pod
    context = security_context(overrides)
    container: dict[str, Any] = {
        "name": container_name,
        "image": spec.image or config.trainer_image,
        "resources": resources,
        "ports": ports,
        "securityContext": context,
    }
    variables = container_env(env, overrides)
    if variables:
        container["env"] = variables
    if overrides.env_from:
        container["envFrom"] = [source.to_wire() for source in overrides.env_from]
    every_volume = (*runtime_volumes(resources["limits"]["memory"]), *volumes)
    container["volumeMounts"] = [mount for _, mount in every_volume]
    container["volumeMounts"] += [mount.to_wire() for mount in overrides.volume_mounts]
    pod: dict[str, Any] = {
        "serviceAccountName": run_service_account(kind, name, spec.service_account_name),
        "securityContext": pod_security_context(context),
        "containers": [container],
        "volumes": [volume for volume, _ in every_volume] + [volume.to_wire() for volume in overrides.volumes],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.to_wire() for t in spec.tolerations]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    return {"metadata": {"labels": dict(labels)}, "spec": pod}


def head_ports(serve_port: int | None = None) -> list[dict[str, Any]]:
    """Ports of the Ray head container (KubeRay's defaults, plus Serve for RayServices)."""
    ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        {"name": "metrics", "containerPort": RAY_METRICS_PORT},
    ]
    if serve_port:
        ports.append({"name": "serve", "containerPort": serve_port})
    return ports


def worker_ports(serve_port: int | None = None) -> list[dict[str, Any]]:
    """Ports of a Ray worker container."""
    ports = [{"name": "metrics", "containerPort": RAY_METRICS_PORT}]
    if serve_port:
        ports.append({"name": "serve", "containerPort": serve_port})
    return ports


def ray_cluster_spec(
    *,
    kind: str,
    name: str,
    spec: CommonSpec,
    config: OperatorConfig,
    workers: WorkerResources,
    min_workers: int,
    max_workers: int,
    serve_port: int | None = None,
    volumes: tuple[Volume, ...] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A RayCluster spec: a head that runs the driver but no tasks (num-cpus 0) and one worker group; env goes
    to every Ray container. The dashboard listens on all interfaces, as KubeRay sets by default (its operator submits
    jobs and Serve configs through it); Ray's token authentication guards it where the Ray version has it, and the
    chart's optional NetworkPolicy limits who reaches it."""
    labels = pod_labels(kind, name)
    head = {
        "rayStartParams": {"num-cpus": "0"},
        "template": pod_template(
            container_name="ray-head",
            kind=kind,
            name=name,
            spec=spec,
            config=config,
            labels=labels,
            resources=container_resources(config.head_cpu, config.head_memory),
            ports=head_ports(serve_port),
            volumes=volumes,
            env=env,
        ),
    }
    group = {
        "groupName": WORKER_GROUP,
        "replicas": min_workers,
        "minReplicas": min_workers,
        "maxReplicas": max_workers,
        "rayStartParams": {},
        "template": pod_template(
            container_name="ray-worker",
            kind=kind,
            name=name,
            spec=spec,
            config=config,
            labels=labels,
            resources=worker_resources(workers),
            ports=worker_ports(serve_port),
            volumes=volumes,
            env=env,
        ),
    }
    cluster = {"rayVersion": config.ray_version, "headGroupSpec": head, "workerGroupSpecs": [group]}
    if supports_token_auth(config.ray_version):
        # KubeRay (1.5.1 and later) creates a Secret with a random token and gives every Ray container
        # RAY_AUTH_MODE=token and RAY_AUTH_TOKEN; older KubeRay versions drop the unknown field.
        cluster["authOptions"] = {"mode": "token"}
    return cluster


TOKEN_AUTH_RAY_VERSION = (2, 52)
"""The first Ray release with token authentication (RAY_AUTH_MODE=token)."""


def supports_token_auth(ray_version: str) -> bool:
    """Whether a Ray version has token authentication (2.52 and later; an unparsable version is taken as recent)."""
    parts = ray_version.split(".")[:2]
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        return True
    return (int(parts[0]), int(parts[1])) >= TOKEN_AUTH_RAY_VERSION
