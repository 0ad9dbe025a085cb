"""DataPipeline handlers: one RayJob running `python -m kubeforge_trainer data`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..config import OperatorConfig
from ..constants import GROUP, RAY_GROUP, RAY_VERSION, VERSION, owner_label
from ..status import ChildState
from .common import (
    MISSING,
    OperatorContext,
    Outcome,
    context,
    follow_child,
    forget,
    reconcile_in_handler,
    resync,
)
from .jobs import delete_attempts, is_active, reconcile_job, update_job

KIND = "DataPipeline"
PLURAL = "datapipelines"


def pipeline_output(pipeline: Mapping[str, Any]) -> str | None:
    """Where a DataPipeline wrote its dataset: status.outputUri, else spec.output.uri."""
    status, spec = pipeline.get("status") or {}, pipeline.get("spec") or {}
    return status.get("outputUri") or (spec.get("output") or {}).get("uri")


def datapipeline_extra(body: Mapping[str, Any], state: ChildState) -> dict[str, Any]:
    """On success, status.outputUri falls back to spec.output.uri when the data step did not report it."""
    if state.phase != "Succeeded" or (body.get("status") or {}).get("outputUri"):
        return {}
    uri = pipeline_output(body)
    return {"outputUri": uri} if uri else {}


async def reconcile_datapipeline(ctx: OperatorContext, body: Mapping[str, Any], child: Any = MISSING) -> Outcome:
    """Create the DataPipeline's RayJob if needed and derive its status."""
    return await reconcile_job(KIND, ctx, body, child=child, extra=datapipeline_extra)


async def datapipeline_create(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """A new DataPipeline: validate it and start its RayJob."""
    await reconcile_in_handler(KIND, body, patch, memo, reconcile_datapipeline)


async def datapipeline_resume(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """The operator (re)started: pick the DataPipeline up where it is; a finished one is left alone."""
    await reconcile_in_handler(KIND, body, patch, memo, reconcile_datapipeline)


async def datapipeline_update(body: kopf.Body, patch: kopf.Patch, memo: Any, old: Any, new: Any, **_: Any) -> None:
    """The spec changed: pass spec.suspend on; any other change after the start only sets SpecLocked."""
    await update_job(KIND, body, patch, memo, old, new, reconcile_datapipeline)


async def datapipeline_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Periodic re-check of an unfinished DataPipeline, in case a child event was missed."""
    await resync(context(memo), KIND, body, reconcile_datapipeline)


async def datapipeline_child_status(body: kopf.Body, type: str | None, labels: Any, memo: Any, **_: Any) -> None:
    """A DataPipeline's RayJob changed: follow its status."""
    await follow_child(context(memo), KIND, labels.get(owner_label(KIND)), body, type, reconcile_datapipeline)


async def datapipeline_delete(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The DataPipeline is being deleted: delete its RayJobs now and forget it in the metrics."""
    ctx = context(memo)
    await delete_attempts(ctx, KIND, body)
    forget(ctx, KIND, body)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the DataPipeline handlers."""
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.create(*resource, registry=registry)(datapipeline_create)
    kopf.on.resume(*resource, registry=registry)(datapipeline_resume)
    kopf.on.update(*resource, field="spec", registry=registry)(datapipeline_update)
    kopf.on.delete(*resource, registry=registry)(datapipeline_delete)
    kopf.timer(
        *resource,
        interval=config.requeue_seconds,
        initial_delay=config.requeue_seconds,
        when=is_active,
        registry=registry,
    )(datapipeline_resync)
    kopf.on.event(RAY_GROUP, RAY_VERSION, "rayjobs", labels={owner_label(KIND): kopf.PRESENT}, registry=registry)(
        datapipeline_child_status
    )
