"""TrainingJob handlers: wait for the DataPipeline, then one RayJob per attempt running `kubeforge_trainer train`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..api import TrainingJob
from ..status import Dependency
from .common import MISSING, OperatorContext, Outcome, context, on_resource_event, wake_dependents
from .datapipeline import pipeline_output
from .jobs import reconcile_job
from .kube import kubeforge_resource

KIND = "TrainingJob"
PLURAL = "trainingjobs"


async def resolve_data(ctx: OperatorContext, job: TrainingJob) -> tuple[Dependency, str | None]:
    """Whether the training data is ready, and where it is (spec.dataRef.uri, or the DataPipeline's output)."""
    ref = job.spec.data_ref
    if ref.uri:
        return Dependency(True, "DataUriSet", f"reading data from {ref.uri}"), ref.uri
    namespace = job.metadata.namespace or "default"
    cached = ctx.data_outputs.get((namespace, ref.name or ""))
    if cached:
        return Dependency(True, "DataPipelineSucceeded", f"DataPipeline {ref.name} wrote {cached}"), cached
    pipeline = await ctx.api.get(kubeforge_resource("DataPipeline"), namespace, ref.name or "")
    if pipeline is None:
        return Dependency(False, "DataPipelineNotFound", f"DataPipeline {ref.name} not found in {namespace}"), None
    status = pipeline.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        detail = status.get("message") or "no message"
        return Dependency(False, "DataPipelineFailed", f"DataPipeline {ref.name} failed: {detail}"), None
    if phase != "Succeeded":
        return Dependency(False, "DataPipelineNotReady", f"waiting for DataPipeline {ref.name} ({phase})"), None
    uri = pipeline_output(pipeline)
    if not uri:
        return Dependency(False, "DataPipelineNoOutput", f"DataPipeline {ref.name} succeeded without an output"), None
    return Dependency(True, "DataPipelineSucceeded", f"DataPipeline {ref.name} wrote {uri}"), uri


async def reconcile_trainingjob(ctx: OperatorContext, body: Mapping[str, Any], child: Any = MISSING) -> Outcome:
    """Start (or retry) the TrainingJob's RayJob once its data is ready, and derive its status."""
    return await reconcile_job(KIND, ctx, body, child=child, resolve=resolve_data)


async def trainingjob_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A TrainingJob was created, changed, listed or deleted: reconcile it if the event tells something new."""
    await on_resource_event(context(memo), KIND, body, type, reconcile_trainingjob, depends_on=waits_for)


def waits_for(body: Mapping[str, Any]) -> list[str]:
    """The DataPipeline a TrainingJob that has not started yet waits for (none once it started, or for a URI)."""
    ref = (body.get("spec") or {}).get("dataRef") or {}
    return [ref["name"]] if ref.get("name") and not (body.get("status") or {}).get("childName") else []


async def trainingjob_data_changed(
    namespace: str, name: str, type: str | None, body: kopf.Body, memo: Any, **_: Any
) -> None:
    """A DataPipeline changed: remember a success's output, and when its phase changed reconcile the TrainingJobs
    waiting for it now (start them, or say why they still wait) rather than at the next resync."""
    ctx = context(memo)
    if type == "DELETED":
        ctx.data_outputs.pop((namespace, name), None)
    elif (body.get("status") or {}).get("phase") == "Succeeded" and (uri := pipeline_output(body)):
        ctx.data_outputs[(namespace, name)] = uri
    waiting = ctx.dependents[KIND].of(namespace, name)
    await wake_dependents(ctx, "DataPipeline", body, type, waiting, KIND, reconcile_trainingjob)
