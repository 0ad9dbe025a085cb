"""ModelDeployment handlers: wait for the model, then one RayService serving it; spec changes roll out through it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import kopf

from ..api import ModelDeployment
from ..api.modeldeployment import ModelRef
from ..builders import ResolvedModel, build_monitor, build_rayservice, child_name, parse_resource, serve_url
from ..builders.monitoring import MONITOR_PLURALS, MONITORING_GROUP, MONITORING_VERSION, monitor_name
from ..builders.rayservice import ResolvedAdapter
from ..config import OperatorConfig
from ..constants import ANNOTATION_SPEC_HASH, GROUP, RAY_GROUP, RAY_VERSION, VERSION, owner_label
from ..events import WARNING, Event, post_events
from ..status import Dependency, Observation, rayservice_state
from .common import (
    MISSING,
    OperatorContext,
    Outcome,
    context,
    follow_child,
    forget,
    identity,
    make_outcome,
    reconcile_in_handler,
    reconcile_via_api,
    resync,
)
from .jobs import create_child, has_succeeded, name_conflict
from .kube import RAYSERVICES, ApiRejected, NotFound, Resource, kubeforge_resource

KIND = "ModelDeployment"
PLURAL = "modeldeployments"


async def resolve_model(
    ctx: OperatorContext, namespace: str, ref: ModelRef | None, uri: str | None, role: str = "model"
) -> tuple[Dependency, ResolvedModel | None]:
    """Whether a model is ready to serve and where it is: spec.modelUri, or what a TrainingJob exported."""
    if uri:
        return Dependency(True, "ModelUriSet", f"{role} {uri}"), ResolvedModel(uri)
    assert ref is not None  # the CRD's CEL rule: exactly one of modelRef and modelUri
    job = await ctx.api.get(kubeforge_resource("TrainingJob"), namespace, ref.name)
    if job is None:
        return Dependency(
            False, "TrainingJobNotFound", f"{role}: TrainingJob {ref.name} not found in {namespace}"
        ), None
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        detail = status.get("message") or "no message"
        return Dependency(False, "TrainingJobFailed", f"{role}: TrainingJob {ref.name} failed: {detail}"), None
    if phase != "Succeeded":
        message = f"{role}: waiting for TrainingJob {ref.name} ({phase})"
        return Dependency(False, "TrainingJobNotReady", message), None
    spec = job.get("spec") or {}
    exported = status.get("modelUri") or (spec.get("output") or {}).get("uri")
    if not exported and (spec.get("checkpoint") or {}).get("uri"):
        exported = spec["checkpoint"]["uri"].rstrip("/") + "/model"  # TrainingJob's documented default
    if not exported:
        return Dependency(False, "ModelNotExported", f"{role}: TrainingJob {ref.name} exported no model"), None
    version = status.get("modelVersion") or ""
    if ref.version and version and ref.version != version:
        message = f"{role}: TrainingJob {ref.name} exported version {version}, not {ref.version}"
        return Dependency(False, "ModelVersionNotFound", message), None
    model = ResolvedModel(exported, ref.version or version)
    return Dependency(True, "ModelExported", f"{role}: TrainingJob {ref.name} exported {exported}"), model


async def resolve_models(
    ctx: OperatorContext, deployment: ModelDeployment
) -> tuple[Dependency, ResolvedModel | None, ResolvedModel | None]:
    """The main model and the canary (when set), and whether both are ready."""
    spec = deployment.spec
    namespace = deployment.metadata.namespace or "default"
    dependency, model = await resolve_model(ctx, namespace, spec.model_ref, spec.model_uri)
    if not dependency.ready or spec.canary is None:
        return dependency, model, None
    canary_dependency, canary = await resolve_model(
        ctx, namespace, spec.canary.model_ref, spec.canary.model_uri, role="canary"
    )
    if not canary_dependency.ready:
        return canary_dependency, model, None
    combined = Dependency(True, "ModelExported", f"{dependency.message}; {canary_dependency.message}")
    return combined, model, canary


async def resolve_adapters(ctx: OperatorContext, deployment: ModelDeployment) -> list[ResolvedAdapter]:
    """spec.adapters that can be served now: by uri, or exported by a TrainingJob that succeeded. The others are
    added by a later reconcile (a TrainingJob's success triggers one); the base model never waits for them."""
    namespace = deployment.metadata.namespace or "default"
    adapters = []
    for adapter in deployment.spec.adapters:
        role = f"adapter {adapter.name}"
        _, resolved = await resolve_model(ctx, namespace, adapter.model_ref, adapter.uri, role=role)
        if resolved is not None:
            adapters.append(ResolvedAdapter(adapter.name, resolved.uri, resolved.version))
    return adapters


def traffic(deployment: ModelDeployment, model: ResolvedModel, canary: ResolvedModel | None) -> list[dict[str, Any]]:
    """status.traffic: the share of requests each version gets."""
    if canary is None or deployment.spec.canary is None:
        return [{"version": model.version or "stable", "modelUri": model.uri, "percent": 100}]
    share = deployment.spec.canary.traffic_percent
    return [
        {"version": model.version or "stable", "modelUri": model.uri, "percent": 100 - share},
        {"version": canary.version or "canary", "modelUri": canary.uri, "percent": share},
    ]


async def roll_out(
    ctx: OperatorContext, body: Mapping[str, Any], current: Mapping[str, Any], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Replace the RayService's spec with the new one (a JSON patch, so removed fields go too); KubeRay then
    updates the Serve application in place or brings up a new cluster and moves traffic over.

    The spec is the operator's alone and computed from the ModelDeployment, so no resourceVersion guard: KubeRay
    keeps rewriting the status, and a guard would only turn those writes into needless conflicts."""
    meta = current.get("metadata") or {}
    labels = {**(meta.get("labels") or {}), **manifest["metadata"]["labels"]}
    annotations = {**(meta.get("annotations") or {}), **manifest["metadata"]["annotations"]}
    operations = [
        {"op": "replace", "path": "/spec", "value": manifest["spec"]},
        {"op": "add", "path": "/metadata/labels", "value": labels},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]
    namespace, name = identity(current)
    return await ctx.api.patch_json(RAYSERVICES, namespace, name, operations)


async def sync_monitor(ctx: OperatorContext, body: Mapping[str, Any], deployment: ModelDeployment) -> None:
    """Create or update the PodMonitor / ServiceMonitor when spec.monitoring is enabled, delete it otherwise.
    Without the Prometheus Operator's CRDs this is a Warning Event, not a failure."""
    namespace, name = identity(body)
    monitoring = deployment.spec.monitoring
    try:
        for kind, plural in MONITOR_PLURALS.items():
            resource = Resource(MONITORING_GROUP, MONITORING_VERSION, plural)
            if monitoring.enabled and monitoring.kind == kind:
                manifest = build_monitor(deployment)
                existing = await create_child(ctx, resource, body, manifest)
                if existing is not None and existing.get("spec") != manifest["spec"]:
                    await ctx.api.patch(resource, namespace, monitor_name(name), {"spec": manifest["spec"]})
            else:
                await ctx.api.delete(resource, namespace, monitor_name(name))
    except (NotFound, ApiRejected) as exc:
        if monitoring.enabled:
            message = f"cannot create the {monitoring.kind} (is the Prometheus Operator installed?): {exc}"
            post_events(body, [Event(WARNING, "MonitoringUnavailable", message)])


async def reconcile_modeldeployment(
    ctx: OperatorContext, body: Mapping[str, Any], child: Any = MISSING, *, monitoring: bool = False
) -> Outcome:
    """Create or roll out the RayService once the model is ready, and derive the status."""
    namespace, name = identity(body)
    service_name = child_name(KIND, name)
    suspend = bool((body.get("spec") or {}).get("suspend"))
    if child is MISSING or (child or {}).get("metadata", {}).get("name") != service_name:
        child = await ctx.api.get(RAYSERVICES, namespace, service_name)
    deployment, problem = parse_resource(body)
    if problem:
        # The RayService, if any, keeps serving the last valid spec.
        return make_outcome(KIND, body, Observation(invalid=problem, suspend_requested=suspend), "invalid")
    assert isinstance(deployment, ModelDeployment)
    dependency, model, canary = await resolve_models(ctx, deployment)
    extra: dict[str, Any] = {}
    rolling_out = False
    if dependency.ready and model is not None:
        adapters = await resolve_adapters(ctx, deployment)
        manifest = build_rayservice(deployment, ctx.config, model=model, canary=canary, adapters=adapters)
        wanted = manifest["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        if child is None:
            child = await create_child(ctx, RAYSERVICES, body, manifest)
            if child is None:
                conflict = name_conflict(KIND, service_name, "RayService")
                observation = Observation(child=conflict, dependency=dependency, suspend_requested=suspend)
                return make_outcome(KIND, body, observation, "waiting")
        elif (child.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH) != wanted:
            child = await roll_out(ctx, body, child, manifest)
            rolling_out = True
        if monitoring:
            await sync_monitor(ctx, body, deployment)
        extra = {
            "url": serve_url(service_name, namespace, ctx.config.serve_port),
            "modelUri": model.uri,
            "modelVersion": model.version or None,
            "traffic": traffic(deployment, model, canary),
            "adapters": [{"name": a.name, "version": a.version} for a in adapters],
        }
    if child is None:
        observation = Observation(dependency=dependency, suspend_requested=suspend)
        return make_outcome(KIND, body, observation, "waiting" if not dependency.ready else "ok")
    state = rayservice_state(child)
    if rolling_out:
        state = dataclasses.replace(state, reason="RollingOut", progressing=True)
    observation = Observation(
        child_name=service_name,
        child=state,
        dependency=dependency,
        suspend_requested=suspend,
        extra=extra,
    )
    return make_outcome(KIND, body, observation, "ok" if dependency.ready else "waiting", child=child)


async def _reconcile_with_monitoring(ctx: OperatorContext, body: Mapping[str, Any]) -> Outcome:
    return await reconcile_modeldeployment(ctx, body, monitoring=True)


async def modeldeployment_create(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """A new ModelDeployment: validate it, then serve its model or wait for it."""
    await reconcile_in_handler(KIND, body, patch, memo, _reconcile_with_monitoring)


async def modeldeployment_resume(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """The operator (re)started: bring the RayService in line with the spec."""
    await reconcile_in_handler(KIND, body, patch, memo, _reconcile_with_monitoring)


async def modeldeployment_update(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """The spec changed: roll it out through the RayService."""
    await reconcile_in_handler(KIND, body, patch, memo, _reconcile_with_monitoring)


async def modeldeployment_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Periodic re-check of the model and the RayService, in case an event was missed."""
    await resync(context(memo), KIND, body, reconcile_modeldeployment)


async def modeldeployment_child_status(body: kopf.Body, type: str | None, labels: Any, memo: Any, **_: Any) -> None:
    """A ModelDeployment's RayService changed: follow its status."""
    await follow_child(context(memo), KIND, labels.get(owner_label(KIND)), body, type, reconcile_modeldeployment)


def modeldeployment_model_refs(spec: Any, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], str]:
    """Index: (namespace, TrainingJob name) -> ModelDeployments serving its model (main, canary or adapter)."""
    spec = spec or {}
    refs = [(spec.get("modelRef") or {}).get("name"), ((spec.get("canary") or {}).get("modelRef") or {}).get("name")]
    refs += [(adapter.get("modelRef") or {}).get("name") for adapter in spec.get("adapters") or []]
    return {(namespace, ref): name for ref in refs if ref}


async def modeldeployment_model_ready(
    namespace: str, name: str, memo: Any, modeldeployment_model_refs: kopf.Index, **_: Any
) -> None:
    """A TrainingJob succeeded: serve its model in the ModelDeployments waiting for it now."""
    ctx = context(memo)
    for deployment in list(modeldeployment_model_refs.get((namespace, name), [])):
        await reconcile_via_api(ctx, KIND, namespace, deployment, reconcile_modeldeployment)


async def modeldeployment_delete(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The ModelDeployment is being deleted: delete its RayService and monitor now, forget it in the metrics."""
    ctx = context(memo)
    namespace, name = identity(body)
    await ctx.api.delete(RAYSERVICES, namespace, child_name(KIND, name))
    for plural in MONITOR_PLURALS.values():
        try:
            await ctx.api.delete(Resource(MONITORING_GROUP, MONITORING_VERSION, plural), namespace, monitor_name(name))
        except ApiRejected:
            pass  # no Prometheus Operator, or no permission: nothing of ours can be there
    forget(ctx, KIND, body)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the ModelDeployment handlers."""
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.create(*resource, registry=registry)(modeldeployment_create)
    kopf.on.resume(*resource, registry=registry)(modeldeployment_resume)
    kopf.on.update(*resource, field="spec", registry=registry)(modeldeployment_update)
    kopf.on.delete(*resource, registry=registry)(modeldeployment_delete)
    kopf.timer(*resource, interval=config.requeue_seconds, initial_delay=config.requeue_seconds, registry=registry)(
        modeldeployment_resync
    )
    kopf.on.event(RAY_GROUP, RAY_VERSION, "rayservices", labels={owner_label(KIND): kopf.PRESENT}, registry=registry)(
        modeldeployment_child_status
    )
    kopf.index(*resource, registry=registry)(modeldeployment_model_refs)
    kopf.on.event(GROUP, VERSION, "trainingjobs", when=has_succeeded, registry=registry)(modeldeployment_model_ready)
