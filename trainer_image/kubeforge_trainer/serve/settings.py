"""From build_app's arguments (the ModelDeployment and resolved model URIs) to Ray Serve deployment options.

Pure: nothing here touches Ray, so every field of the spec has a unit-tested mapping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubeforge.api.common import parse_quantity
from kubeforge.api.modeldeployment import (
    BatchingSpec,
    GenerationDefaults,
    ModelDeployment,
    ModelDeploymentSpec,
    RequestLimits,
)
from kubeforge.builders.rayservice import ResolvedAdapter, scaling_options, serve_user_config

STABLE, CANARY = "stable", "canary"
REPLICA_HEADROOM = 32  # requests a replica takes beyond its admission limits: health checks, /v1/models, errors


@dataclass(frozen=True)
class ModelVersion:
    """One model version behind the endpoint and its share of traffic."""

    role: str  # stable | canary
    version: str
    uri: str
    traffic_percent: int


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter to serve over the base model: its name (the request's model), directory and version."""

    name: str
    uri: str
    version: str = ""

    def to_wire(self) -> dict[str, str]:
        """The user_config form."""
        return {"name": self.name, "uri": self.uri, "version": self.version}


@dataclass(frozen=True)
class AppSettings:
    """Everything build_app needs, checked."""

    name: str
    namespace: str | None
    spec: ModelDeploymentSpec
    versions: tuple[ModelVersion, ...]
    adapters: tuple[AdapterRef, ...] = ()

    def version(self, role: str) -> ModelVersion:
        """The version with this role."""
        return next(v for v in self.versions if v.role == role)


def parse_app_args(args: dict[str, Any], read_version: Callable[[str], str]) -> AppSettings:
    """Check build_app's arguments; read_version(uri) supplies a version the arguments leave out.

    args = {"resource": ModelDeployment (dict or JSON), "modelUri", "modelVersion", "canaryModelUri"?,
    "canaryModelVersion"?}; modelUri falls back to spec.modelUri and canaryModelUri to spec.canary.modelUri.
    """
    raw = args.get("resource")
    if raw is None:
        raise ValueError("build_app needs args['resource']: the ModelDeployment as JSON")
    resource = ModelDeployment.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
    spec = resource.spec
    uri = args.get("modelUri") or spec.model_uri
    if not uri:
        raise ValueError("no model to serve: pass args['modelUri'] (the operator resolves spec.modelRef to it)")
    canary_percent = spec.canary.traffic_percent if spec.canary else 0
    versions = [ModelVersion(STABLE, args.get("modelVersion") or read_version(uri), uri, 100 - canary_percent)]
    if spec.canary is not None:
        canary_uri = args.get("canaryModelUri") or spec.canary.model_uri
        if not canary_uri:
            raise ValueError("spec.canary is set but no canary model: pass args['canaryModelUri']")
        canary_version = args.get("canaryModelVersion") or read_version(canary_uri)
        versions.append(ModelVersion(CANARY, canary_version, canary_uri, canary_percent))
        if canary_version == versions[0].version:
            raise ValueError(f"the canary and the stable model are both version {canary_version!r}")
    elif args.get("canaryModelUri"):
        raise ValueError("args['canaryModelUri'] is set but spec.canary is not: set spec.canary.trafficPercent")
    if spec.engine != "transformers":
        raise ValueError(f"spec.engine {spec.engine} is served by Ray Serve LLM, not by kubeforge_trainer.serve")
    if spec.quantization == "int8" and spec.resources.gpu > 0:
        raise ValueError("quantization int8 is dynamic CPU quantisation; it cannot be used with resources.gpu > 0")
    adapters = parse_adapters(args, spec, resource.metadata.name, versions)
    return AppSettings(resource.metadata.name, resource.metadata.namespace, spec, tuple(versions), adapters)


def parse_adapters(
    args: dict[str, Any], spec: ModelDeploymentSpec, name: str, versions: list[ModelVersion]
) -> tuple[AdapterRef, ...]:
    """The adapters to serve: args['adapters'] ([{name, uri, version}], modelRefs resolved by the operator), else
    spec.adapters given by uri."""
    if "adapters" in args:
        adapters = tuple(AdapterRef(a["name"], a["uri"], str(a.get("version") or "")) for a in args["adapters"] or [])
    else:
        unresolved = [a.name for a in spec.adapters if a.uri is None]
        if unresolved:
            raise ValueError(
                f"spec.adapters {', '.join(unresolved)}: modelRef: pass args['adapters'] (the operator resolves it)"
            )
        adapters = tuple(AdapterRef(a.name, a.uri or "") for a in spec.adapters)
    taken = {name} | {v.version for v in versions} | {f"{name}:{v.version}" for v in versions}
    clash = [a.name for a in adapters if a.name in taken]
    if clash:
        raise ValueError(f"spec.adapters: {', '.join(clash)} is already the deployment's or a version's name")
    if adapters and spec.quantization == "int8":
        raise ValueError("spec.adapters cannot be used with quantization int8 (LoRA needs the float linear layers)")
    return adapters


def torch_threads(spec: ModelDeploymentSpec) -> int:
    """Intra-op threads per replica: the CPUs it reserved (at least one), so replicas do not oversubscribe a node."""
    return max(1, math.floor(parse_quantity(spec.resources.cpu)))


def model_user_config(spec: ModelDeploymentSpec, adapters: tuple[AdapterRef, ...] = ()) -> dict[str, Any]:
    """What a model replica can change without a restart (Serve user_config -> reconfigure); the operator's
    serveConfigV2 carries the same mapping as the deployment's user_config override."""
    return serve_user_config(spec, [ResolvedAdapter(a.name, a.uri, a.version) for a in adapters])


@dataclass(frozen=True)
class UserConfig:
    """What reconfigure() applies: batching, generation defaults, per-request limits, adapters."""

    batching: BatchingSpec
    generation: GenerationDefaults
    limits: RequestLimits
    adapters: tuple[AdapterRef, ...]


def parse_model_user_config(config: dict[str, Any]) -> UserConfig:
    """The inverse of model_user_config."""
    adapters = tuple(AdapterRef(a["name"], a["uri"], a.get("version", "")) for a in config.get("adapters", []))
    return UserConfig(
        BatchingSpec.model_validate(config["batching"]),
        GenerationDefaults.model_validate(config["generation"]),
        RequestLimits.model_validate(config.get("limits") or {}),
        adapters,
    )


def batch_limits(batching: BatchingSpec) -> tuple[int, float]:
    """(max batch size, max wait in seconds) of the batchers; batching disabled is batches of one, no wait."""
    if not batching.enabled:
        return 1, 0.0
    return batching.max_batch_size, batching.max_wait_ms / 1000.0


def admission_limits(spec: ModelDeploymentSpec) -> tuple[int, int]:
    """(requests a replica runs at once, requests that may wait for them) before it answers 503."""
    return spec.replicas.max_ongoing_requests, spec.replicas.max_queued_requests


def server_deployment_options(spec: ModelDeploymentSpec, adapters: tuple[AdapterRef, ...] = ()) -> dict[str, Any]:
    """Ray Serve options of the app's deployment: replicas, autoscaling, request limits, resources, user_config.

    The replica enforces maxOngoingRequests and maxQueuedRequests itself (AdmissionGate), so overload is answered
    with the API's JSON 503. Serve lets a replica take that many requests plus headroom for health checks and
    /v1/models. Serve's own queue at the proxy also holds requests while it assigns them to replicas, so it is
    bounded by what all replicas together accept: it refuses (plain-text 503) only when no replica could take more.
    """
    resources = spec.resources
    actor_options: dict[str, Any] = {
        "num_cpus": parse_quantity(resources.cpu),
        "memory": parse_quantity(resources.memory),
    }
    if resources.gpu:
        actor_options["num_gpus"] = resources.gpu
    running, queued = admission_limits(spec)
    per_replica = running + queued + REPLICA_HEADROOM
    return {
        **scaling_options(spec.replicas),
        "max_ongoing_requests": per_replica,
        "max_queued_requests": per_replica * spec.replicas.max,
        "ray_actor_options": actor_options,
        "user_config": model_user_config(spec, adapters),
        # A model that cannot load (bad URI, corrupt weights) fails the deployment after a few tries, not twenty.
        "max_constructor_retry_count": 3,
        # Direct ingress: a replica listens on the node's serve port itself, so a node holds one of them.
        **({"max_replicas_per_node": 1} if spec.ingress == "direct" else {}),
    }
