"""DataPipeline handlers: one RayJob running `python -m kubeforge_trainer data`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..status import ChildState
from .common import MISSING, OperatorContext, Outcome, context, on_resource_event
from .jobs import reconcile_job

KIND = "DataPipeline"
PLURAL = "datapipelines"


def pipeline_output(pipeline: Mapping[str, Any]) -> str | None:
    """Where a DataPipeline writes its dataset: spec.output.uri, where the data step writes. Never the status's
    outputUri: workloads can write status, and the operator acts only on specs (docs/operator.md, trust)."""
    return ((pipeline.get("spec") or {}).get("output") or {}).get("uri")


def datapipeline_extra(body: Mapping[str, Any], state: ChildState) -> dict[str, Any]:
    """On success, status.outputUri is set from spec.output.uri when the data step did not report it."""
    if state.phase != "Succeeded" or (body.get("status") or {}).get("outputUri"):
        return {}
    uri = pipeline_output(body)
    return {"outputUri": uri} if uri else {}


async def reconcile_datapipeline(ctx: OperatorContext, body: Mapping[str, Any], child: Any = MISSING) -> Outcome:
    """Create the DataPipeline's RayJob if needed and derive its status."""
    return await reconcile_job(KIND, ctx, body, child=child, extra=datapipeline_extra)


async def datapipeline_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A DataPipeline was created, changed, listed or deleted: reconcile it if the event tells something new."""
    await on_resource_event(context(memo), KIND, body, type, reconcile_datapipeline)
