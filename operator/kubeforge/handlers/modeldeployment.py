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
from ..constants import ANNOTATION_SPEC_HASH
from ..events import WARNING, Event
from ..status import Dependency, Observation, rayservice_state
from .common import (
    MISSING,
    OperatorContext,
    Outcome,
    context,
    current_child,
    identity,
    make_outcome,
    on_resource_event,
    record_child,
    spec_changed,
    wake_dependents,
)
from .jobs import create_child, ensure_run_access, name_conflict
from .kube import RAYSERVICES, ApiRejected, NotFound, Resource, kubeforge_resource

KIND = "ModelDeployment"
PLURAL = "modeldeployments"


def exported_model(job: Mapping[str, Any]) -> str | None:
    """Where a TrainingJob exports its model: spec.output.uri, else <spec.checkpoint.uri>/model (where the trainer
    writes it). Never status.modelUri: workloads can write status, and the operator acts only on specs."""
    spec = job.get("spec") or {}
    exported = (spec.get("output") or {}).get("uri")
    if not exported and (spec.get("checkpoint") or {}).get("uri"):
        exported = spec["checkpoint"]["uri"].rstrip("/") + "/model"  # TrainingJob's documented default
    return exported


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
    exported = exported_model(job)
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
    """Create or update the PodMonitor / ServiceMonitor when spec.monitoring is enabled, delete it otherwise (a
    new resource has none to delete). Without the Prometheus Operator's CRDs this is a Warning Event, not a
    failure."""
    namespace, name = identity(body)
    monitoring = deployment.spec.monitoring
    if not monitoring.enabled and "observedGeneration" not in (body.get("status") or {}):
        return
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
            ctx.events.post(body, [Event(WARNING, "MonitoringUnavailable", message)])


async def reconcile_modeldeployment(ctx: OperatorContext, body: Mapping[str, Any], child: Any = MISSING) -> Outcome:
    """Create or roll out the RayService once the model is ready, and derive the status."""
    namespace, name = identity(body)
    service_name = child_name(KIND, name)
    suspend = bool((body.get("spec") or {}).get("suspend"))
    if child is MISSING or (child or {}).get("metadata", {}).get("name") != service_name:
        child = await current_child(ctx, RAYSERVICES, KIND, namespace, name, service_name)
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
            conflict = await ensure_run_access(ctx, KIND, body)
            child = None if conflict else await create_child(ctx, RAYSERVICES, body, manifest)
            if child is not None:
                record_child(ctx, KIND, namespace, name, child)
            if child is None:
                conflict = conflict or name_conflict(KIND, service_name, "RayService")
                observation = Observation(child=conflict, dependency=dependency, suspend_requested=suspend)
                return make_outcome(KIND, body, observation, "waiting")
        elif (child.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH) != wanted:
            child = await roll_out(ctx, body, child, manifest)
            record_child(ctx, KIND, namespace, name, child)
            rolling_out = True
        if spec_changed(body):  # the monitor follows the spec alone
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


async def modeldeployment_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A ModelDeployment was created, changed, listed or deleted: reconcile it if the event tells something new
    (a spec change rolls out through the RayService)."""
    await on_resource_event(context(memo), KIND, body, type, reconcile_modeldeployment, depends_on=serves_models_of)


def serves_models_of(body: Mapping[str, Any]) -> list[str]:
    """The TrainingJobs whose models a ModelDeployment serves (main, canary or adapter)."""
    spec = body.get("spec") or {}
    refs = [(spec.get("modelRef") or {}).get("name"), ((spec.get("canary") or {}).get("modelRef") or {}).get("name")]
    refs += [(adapter.get("modelRef") or {}).get("name") for adapter in spec.get("adapters") or []]
    return [ref for ref in refs if ref]


async def modeldeployment_model_changed(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: Any,
    **_: Any,
) -> None:
    """A TrainingJob changed: when its phase changed, reconcile the ModelDeployments that serve its model now."""
    ctx = context(memo)
    deployments = ctx.dependents[KIND].of(namespace, name)
    await wake_dependents(ctx, "TrainingJob", body, type, deployments, KIND, reconcile_modeldeployment)
