"""Pieces every child manifest shares: names, labels, the spec hash, the resource JSON and the Ray pod templates."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from ..api.common import CommonSpec, WorkerResources
from ..config import OperatorConfig
from ..constants import (
    API_VERSION,
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
    volume = {"name": "source", "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True}}
    mount = {"name": "source", "mountPath": f"{PVC_MOUNT_ROOT}/{claim_name}", "readOnly": True}
    return volume, mount


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
    spec: CommonSpec,
    config: OperatorConfig,
    labels: Mapping[str, str],
    resources: dict[str, Any],
    ports: list[dict[str, Any]],
    volumes: tuple[Volume, ...] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Ray pod template: image, resources, ports, and the scheduling fields passed through from the spec."""
    container: dict[str, Any] = {
        "name": container_name,
        "image": spec.image or config.trainer_image,
        "resources": resources,
        "ports": ports,
    }
    if env:
        container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    pod: dict[str, Any] = {
        "serviceAccountName": spec.service_account_name or config.workload_service_account,
        "containers": [container],
    }
    if volumes:
        container["volumeMounts"] = [mount for _, mount in volumes]
        pod["volumes"] = [volume for volume, _ in volumes]
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
    to every Ray container."""
    labels = pod_labels(kind, name)
    head = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": pod_template(
            container_name="ray-head",
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
            spec=spec,
            config=config,
            labels=labels,
            resources=worker_resources(workers),
            ports=worker_ports(serve_port),
            volumes=volumes,
            env=env,
        ),
    }
    return {"rayVersion": config.ray_version, "headGroupSpec": head, "workerGroupSpecs": [group]}
