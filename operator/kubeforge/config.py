"""Operator settings: one frozen object, loaded from the environment variables the Helm chart sets."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import __version__

# Environment variable -> meaning. The Helm chart's Deployment sets these; docs/install.md lists them.
ENV_VARS = {
    "KUBEFORGE_TRAINER_IMAGE": "image of the Ray head and worker pods when a resource sets no spec.image",
    "KUBEFORGE_RAY_VERSION": "Ray version of that image (RayCluster spec.rayVersion)",
    "KUBEFORGE_WATCH_NAMESPACES": "comma-separated namespaces to watch; empty watches the whole cluster",
    "KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS": "JSON object of annotations copied onto each run's ServiceAccount",
    "KUBEFORGE_METRICS_PORT": "port of the operator's Prometheus /metrics",
    "KUBEFORGE_HEALTH_PORT": "port of kopf's liveness endpoint /healthz",
    "KUBEFORGE_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR",
    "KUBEFORGE_REQUEUE_SECONDS": "seconds between safety-net re-checks of unfinished resources (events drive the rest)",
    "KUBEFORGE_SERVE_PORT": "HTTP port of Ray Serve in RayService pods",
    "KUBEFORGE_HEAD_CPU": "CPU request and limit of the Ray head pod (it runs the driver, no tasks)",
    "KUBEFORGE_HEAD_MEMORY": "memory request and limit of the Ray head pod",
}


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator's behaviour depends on besides the resources themselves."""

    trainer_image: str = f"ghcr.io/kubeforge/trainer:{__version__}"
    ray_version: str = "2.60.0"
    watch_namespaces: tuple[str, ...] = field(default_factory=tuple)
    # Copied onto every run's own ServiceAccount: the cloud identity (IRSA, GKE workload identity) of the workloads.
    run_service_account_annotations: tuple[tuple[str, str], ...] = ()  # (key, value) pairs: the object stays hashable
    metrics_port: int = 8080
    health_port: int = 8081
    log_level: str = "INFO"
    # Only a safety net: watch events of the resources, their children and their dependencies drive reconciles.
    requeue_seconds: float = 600.0
    serve_port: int = 8000
    head_cpu: str = "1"
    head_memory: str = "2Gi"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Build from KUBEFORGE_* environment variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str, default: str) -> str:
            value = env.get(name, "").strip()
            return value or default

        try:
            return cls(
                trainer_image=get("KUBEFORGE_TRAINER_IMAGE", defaults.trainer_image),
                ray_version=get("KUBEFORGE_RAY_VERSION", defaults.ray_version),
                watch_namespaces=tuple(
                    ns.strip() for ns in env.get("KUBEFORGE_WATCH_NAMESPACES", "").split(",") if ns.strip()
                ),
                run_service_account_annotations=annotations(env.get("KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS", "")),
                metrics_port=int(get("KUBEFORGE_METRICS_PORT", str(defaults.metrics_port))),
                health_port=int(get("KUBEFORGE_HEALTH_PORT", str(defaults.health_port))),
                log_level=get("KUBEFORGE_LOG_LEVEL", defaults.log_level).upper(),
                requeue_seconds=float(get("KUBEFORGE_REQUEUE_SECONDS", str(defaults.requeue_seconds))),
                serve_port=int(get("KUBEFORGE_SERVE_PORT", str(defaults.serve_port))),
                head_cpu=get("KUBEFORGE_HEAD_CPU", defaults.head_cpu),
                head_memory=get("KUBEFORGE_HEAD_MEMORY", defaults.head_memory),
            )
        except ValueError as exc:
            raise ValueError(f"invalid operator setting: {exc}") from None

    def with_namespaces(self, namespaces: Sequence[str] | None, all_namespaces: bool) -> OperatorConfig:
        """The config with the command line's --namespace / --all-namespaces, which win over the environment."""
        if all_namespaces:
            return dataclasses.replace(self, watch_namespaces=())
        if namespaces:
            unique = tuple(dict.fromkeys(ns.strip() for ns in namespaces if ns.strip()))
            return dataclasses.replace(self, watch_namespaces=unique)
        return self


def annotations(text: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of string annotations (empty text: none); ValueError names the setting otherwise."""
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS must be a JSON object of strings")
    return tuple(sorted(value.items()))


def is_namespace_pattern(namespace: str) -> bool:
    """Whether a --namespace value is a kopf glob pattern (``team-*``, ``!kube-system``) rather than a name."""
    return any(char in namespace for char in "*?!,")
