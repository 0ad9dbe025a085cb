"""RayService manifests for ModelDeployments (pure: no API calls, no kopf)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api import ModelDeployment
from ..config import OperatorConfig
from ..constants import (
    ANNOTATION_SPEC_HASH,
    ENV_RESOURCE_KIND,
    ENV_RESOURCE_NAME,
    ENV_RESOURCE_NAMESPACE,
    RAY_API_VERSION,
    direct_ingress_env,
)
from .common import (
    child_labels,
    child_name,
    ray_cluster_spec,
    resource_document,
    resource_metadata,
    security_context,
    spec_hash,
    to_yaml,
)

# docs/contracts.md: the inference application.
SERVE_IMPORT_PATH = "kubeforge_trainer.serve:build_app"


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory to serve and its version id ("" when the operator cannot know it)."""

    uri: str
    version: str = ""


def serve_url(name: str, namespace: str, port: int) -> str:
    """Base URL of the HTTP endpoint: the Service KubeRay creates for a RayService (<name>-serve-svc)."""
    return f"http://{name}-serve-svc.{namespace}.svc.cluster.local:{port}"


def serve_args(resource: ModelDeployment, model: ResolvedModel, canary: ResolvedModel | None = None) -> dict[str, Any]:
    """Arguments of kubeforge_trainer.serve:build_app; the app splits traffic itself when a canary is set."""
    meta = resource_metadata(resource)
    args: dict[str, Any] = {
        "resource": resource_document(resource.kind, meta, resource.to_wire()["spec"]),
        "modelUri": model.uri,
        "modelVersion": model.version,
    }
    if canary is not None:
        args["canaryModelUri"] = canary.uri
        args["canaryModelVersion"] = canary.version
    return args


def build_serve_config(
    resource: ModelDeployment, config: OperatorConfig, model: ResolvedModel, canary: ResolvedModel | None = None
) -> dict[str, Any]:
    """The Ray Serve config (serveConfigV2, as a mapping): one application serving the model (and its canary)."""
    meta = resource_metadata(resource)
    env = {
        ENV_RESOURCE_KIND: resource.kind,
        ENV_RESOURCE_NAME: meta["name"],
        ENV_RESOURCE_NAMESPACE: meta["namespace"] or "default",
    }
    return {
        "http_options": {"host": "0.0.0.0", "port": config.serve_port},
        "applications": [
            {
                "name": meta["name"],
                "route_prefix": "/",
                "import_path": SERVE_IMPORT_PATH,
                "args": serve_args(resource, model, canary),
                "runtime_env": {"env_vars": env},
            }
        ],
    }


def build_rayservice(
    resource: ModelDeployment,
    config: OperatorConfig,
    *,
    model: ResolvedModel,
    canary: ResolvedModel | None = None,
) -> dict[str, Any]:
    """The RayService serving a ModelDeployment. Changing it rolls out through KubeRay: a new serveConfigV2
    updates the application in place, a new rayClusterConfig brings up a new cluster before the old one goes."""
    meta = resource_metadata(resource)
    spec = resource.spec
    replicas = spec.replicas
    # One Serve replica per worker pod: the canary version may need as many again.
    max_workers = replicas.max * (2 if spec.canary is not None else 1)
    cluster = ray_cluster_spec(
        kind=resource.kind,
        name=meta["name"],
        spec=spec,
        config=config,
        workers=spec.resources,
        min_workers=replicas.min,
        max_workers=max(max_workers, replicas.min),
        serve_port=config.serve_port,
        # Direct ingress: the one replica of each worker pod answers on the serve port itself, no proxy hop.
        env=direct_ingress_env(config.serve_port, config.serve_port) if spec.ingress == "direct" else None,
    )
    # The autoscaler adds worker pods when Serve autoscaling adds replicas.
    cluster["enableInTreeAutoscaling"] = replicas.min != max_workers
    if cluster["enableInTreeAutoscaling"]:
        # KubeRay adds the autoscaler as a second container of the head pod, built from these options: restricted
        # like ours, but with a writable root, since KubeRay (not kubeforge) chooses that container's volumes.
        context = {**security_context(spec.pod), "readOnlyRootFilesystem": False}
        cluster["autoscalerOptions"] = {"securityContext": context}
    if spec.monitoring.enabled and spec.monitoring.kind == "ServiceMonitor":
        # KubeRay creates the head Service from this template; the label lets the ServiceMonitor select it.
        cluster["headGroupSpec"]["headService"] = {"metadata": {"labels": child_labels(resource.kind, meta["name"])}}
    rayservice_spec: dict[str, Any] = {
        "serveConfigV2": to_yaml(build_serve_config(resource, config, model, canary), sort_keys=False),
        "rayClusterConfig": cluster,
        "suspend": spec.suspend,
    }
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": child_name(resource.kind, meta["name"]),
            "namespace": meta["namespace"],
            "labels": child_labels(resource.kind, meta["name"], spec.queue_name),
            "annotations": {ANNOTATION_SPEC_HASH: spec_hash(rayservice_spec, mutable=())},
        },
        "spec": rayservice_spec,
    }
