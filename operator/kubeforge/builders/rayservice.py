"""RayService manifests for ModelDeployments (pure: no API calls, no kopf)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..api import ModelDeployment
from ..api.modeldeployment import ModelDeploymentSpec, ReplicaSpec
from ..config import OperatorConfig
from ..constants import (
    ANNOTATION_SPEC_HASH,
    ENV_RESOURCE_KIND,
    ENV_RESOURCE_NAME,
    ENV_RESOURCE_NAMESPACE,
    ENV_SERVE_API_KEYS,
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
VLLM_IMPORT_PATH = "ray.serve.llm:build_openai_app"  # spec.engine vllm
SERVER_DEPLOYMENT = "server"  # the application's one Serve deployment (kubeforge_trainer.serve.app)
# Spec fields the replicas apply in place (Serve user_config -> reconfigure). They are left out of the app's args:
# Serve hashes the args into the application's code version, and a new code version restarts every replica.
IN_PLACE_FIELDS = ("batching", "generation", "limits", "adapters")


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory to serve and its version id ("" when the operator cannot know it)."""

    uri: str
    version: str = ""


@dataclass(frozen=True)
class ResolvedAdapter:
    """A LoRA adapter directory to serve and its version ("" when unknown)."""

    name: str
    uri: str
    version: str = ""


def serve_user_config(spec: ModelDeploymentSpec, adapters: Sequence[ResolvedAdapter] = ()) -> dict[str, Any]:
    """What the replicas change without a restart (Serve user_config -> reconfigure): batching, generation
    defaults and the LoRA adapters loaded into the running base model."""
    return {
        "batching": spec.batching.to_wire(),
        "generation": spec.generation.to_wire(),
        "limits": spec.limits.to_wire(),
        "adapters": [{"name": a.name, "uri": a.uri, "version": a.version} for a in adapters],
    }


def spec_adapters(spec: ModelDeploymentSpec) -> list[ResolvedAdapter]:
    """spec.adapters given by uri (adapters given by modelRef are resolved by the operator)."""
    return [ResolvedAdapter(a.name, a.uri) for a in spec.adapters if a.uri]


def scaling_options(replicas: ReplicaSpec) -> dict[str, Any]:
    """num_replicas when min == max, else a Ray Serve autoscaling_config (min 0 allows scale to zero)."""
    if replicas.min == replicas.max:
        return {"num_replicas": replicas.min}
    return {
        "autoscaling_config": {
            "min_replicas": replicas.min,
            "max_replicas": replicas.max,
            "initial_replicas": max(replicas.min, 1),
            "target_ongoing_requests": replicas.target_ongoing_requests,
        }
    }


def vllm_application(resource: ModelDeployment, model: ResolvedModel, env: dict[str, str]) -> dict[str, Any]:
    """spec.engine vllm: Ray Serve LLM's OpenAI app (ray.serve.llm.build_openai_app) serving the model with vLLM,
    one tensor-parallel engine over the replica's GPUs. The trainer image must have ray[llm] (vLLM) installed."""
    meta = resource_metadata(resource)
    spec = resource.spec
    llm_config = {
        "model_loading_config": {"model_id": meta["name"], "model_source": model.uri},
        "deployment_config": {
            **scaling_options(spec.replicas),
            "max_ongoing_requests": spec.replicas.max_ongoing_requests,
        },
        "engine_kwargs": {"tensor_parallel_size": spec.resources.gpu},
    }
    return {
        "name": meta["name"],
        "route_prefix": "/",
        "import_path": VLLM_IMPORT_PATH,
        "args": {"llm_configs": [llm_config]},
        "runtime_env": {"env_vars": env},
    }


def serve_url(name: str, namespace: str, port: int) -> str:
    """Base URL of the HTTP endpoint: the Service KubeRay creates for a RayService (<name>-serve-svc)."""
    return f"http://{name}-serve-svc.{namespace}.svc.cluster.local:{port}"


def serve_args(resource: ModelDeployment, model: ResolvedModel, canary: ResolvedModel | None = None) -> dict[str, Any]:
    """Arguments of kubeforge_trainer.serve:build_app; the app splits traffic itself when a canary is set.

    The resource travels without its generation and the in-place fields, so changing only those (an adapter, the
    batching) leaves the args, hence Serve's code version, alone and the replicas keep running."""
    meta = {**resource_metadata(resource), "generation": None}
    spec = {k: v for k, v in resource.to_wire()["spec"].items() if k not in IN_PLACE_FIELDS}
    args: dict[str, Any] = {
        "resource": resource_document(resource.kind, meta, spec),
        "modelUri": model.uri,
        "modelVersion": model.version,
    }
    if canary is not None:
        args["canaryModelUri"] = canary.uri
        args["canaryModelVersion"] = canary.version
    return args


def build_serve_config(
    resource: ModelDeployment,
    config: OperatorConfig,
    model: ResolvedModel,
    canary: ResolvedModel | None = None,
    adapters: Sequence[ResolvedAdapter] | None = None,
) -> dict[str, Any]:
    """The Ray Serve config (serveConfigV2, as a mapping): one application serving the model (and its canary).

    The in-place fields go in the deployment's user_config override: KubeRay applies a changed serveConfigV2 to
    the running application, and a change of user_config alone is a lightweight update (reconfigure, no restart).
    adapters default to spec.adapters given by uri."""
    meta = resource_metadata(resource)
    env = {
        ENV_RESOURCE_KIND: resource.kind,
        ENV_RESOURCE_NAME: meta["name"],
        ENV_RESOURCE_NAMESPACE: meta["namespace"] or "default",
    }
    if resource.spec.engine == "vllm":
        application = vllm_application(resource, model, env)
        return {"http_options": {"host": "0.0.0.0", "port": config.serve_port}, "applications": [application]}
    return {
        "http_options": {"host": "0.0.0.0", "port": config.serve_port},
        "applications": [
            {
                "name": meta["name"],
                "route_prefix": "/",
                "import_path": SERVE_IMPORT_PATH,
                "args": serve_args(resource, model, canary),
                "runtime_env": {"env_vars": env},
                "deployments": [
                    {
                        "name": SERVER_DEPLOYMENT,
                        "user_config": serve_user_config(
                            resource.spec, spec_adapters(resource.spec) if adapters is None else adapters
                        ),
                    }
                ],
            }
        ],
    }


def build_rayservice(
    resource: ModelDeployment,
    config: OperatorConfig,
    *,
    model: ResolvedModel,
    canary: ResolvedModel | None = None,
    adapters: Sequence[ResolvedAdapter] | None = None,
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
    if spec.auth is not None:
        # The keys reach the replicas from the Secret, never through the serve config (visible in the RayService).
        secret = {"secretKeyRef": {"name": spec.auth.api_key_secret, "key": spec.auth.key}}
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        for container in (c for group in groups for c in group["template"]["spec"]["containers"]):
            container.setdefault("env", []).append({"name": ENV_SERVE_API_KEYS, "valueFrom": secret})
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
        "serveConfigV2": to_yaml(build_serve_config(resource, config, model, canary, adapters), sort_keys=False),
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
