"""TrainingJob handlers: wait for the DataPipeline, then one RayJob per attempt running `kubeforge_trainer train`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..api import TrainingJob
from ..config import OperatorConfig
from ..constants import GROUP, RAY_GROUP, RAY_VERSION, VERSION, owner_label
from ..status import Dependency
from .common import (
    MISSING,
    OperatorContext,
    Outcome,
    context,
    follow_child,
    forget,
    reconcile_in_handler,
    reconcile_via_api,
    resync,
)
from .datapipeline import pipeline_output
from .jobs import delete_attempts, has_succeeded, is_active, reconcile_job, update_job
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


async def trainingjob_create(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """A new TrainingJob: validate it, then start it or wait for its data."""
    await reconcile_in_handler(KIND, body, patch, memo, reconcile_trainingjob)


async def trainingjob_resume(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """The operator (re)started: pick the TrainingJob up where it is; a finished one is left alone."""
    await reconcile_in_handler(KIND, body, patch, memo, reconcile_trainingjob)


async def trainingjob_update(body: kopf.Body, patch: kopf.Patch, memo: Any, old: Any, new: Any, **_: Any) -> None:
    """The spec changed: pass spec.suspend on; any other change after the start only sets SpecLocked."""
    await update_job(KIND, body, patch, memo, old, new, reconcile_trainingjob)


async def trainingjob_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Periodic re-check of an unfinished TrainingJob (its data, its RayJob), in case an event was missed."""
    await resync(context(memo), KIND, body, reconcile_trainingjob)


async def trainingjob_child_status(body: kopf.Body, type: str | None, labels: Any, memo: Any, **_: Any) -> None:
    """A TrainingJob's RayJob changed: follow its status, retry a failure."""
    await follow_child(context(memo), KIND, labels.get(owner_label(KIND)), body, type, reconcile_trainingjob)


def trainingjob_data_refs(spec: Any, status: Any, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], str]:
    """Index: (namespace, DataPipeline name) -> TrainingJobs that have not started yet and wait for it."""
    ref = (spec or {}).get("dataRef") or {}
    if ref.get("name") and not (status or {}).get("childName"):
        return {(namespace, ref["name"]): name}
    return {}


async def trainingjob_data_ready(
    namespace: str,
    name: str,
    type: str | None,
    body: kopf.Body,
    memo: Any,
    trainingjob_data_refs: kopf.Index,
    **_: Any,
) -> None:
    """A DataPipeline succeeded: remember its output and start the TrainingJobs waiting for it now rather than at
    the next resync (a deleted one is forgotten)."""
    ctx = context(memo)
    if type == "DELETED":
        ctx.data_outputs.pop((namespace, name), None)
        return
    uri = pipeline_output(body)
    if uri:
        ctx.data_outputs[(namespace, name)] = uri
    for job in list(trainingjob_data_refs.get((namespace, name), [])):
        await reconcile_via_api(ctx, KIND, namespace, job, reconcile_trainingjob)


async def trainingjob_delete(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The TrainingJob is being deleted: delete the RayJobs of all attempts now and forget it in the metrics."""
    ctx = context(memo)
    await delete_attempts(ctx, KIND, body)
    forget(ctx, KIND, body)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the TrainingJob handlers."""
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.create(*resource, registry=registry)(trainingjob_create)
    kopf.on.resume(*resource, registry=registry)(trainingjob_resume)
    kopf.on.update(*resource, field="spec", registry=registry)(trainingjob_update)
    kopf.on.delete(*resource, registry=registry)(trainingjob_delete)
    kopf.timer(
        *resource,
        interval=config.requeue_seconds,
        initial_delay=config.requeue_seconds,
        when=is_active,
        registry=registry,
    )(trainingjob_resync)
    kopf.on.event(RAY_GROUP, RAY_VERSION, "rayjobs", labels={owner_label(KIND): kopf.PRESENT}, registry=registry)(
        trainingjob_child_status
    )
    kopf.index(*resource, registry=registry)(trainingjob_data_refs)
    kopf.on.event(GROUP, VERSION, "datapipelines", when=has_succeeded, registry=registry)(trainingjob_data_ready)
