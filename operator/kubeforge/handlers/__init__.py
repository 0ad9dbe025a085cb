"""kopf handlers, one module per kind; `register_all` puts them into a registry.

One watch-event handler per watched resource type, which calls every kind's reaction to it: kopf's cost is per
handler invocation (its arguments, its logging context), so an event costs one, whatever reacts to it.
"""

from __future__ import annotations

from typing import Any

import kopf

from ..config import OperatorConfig
from ..constants import GROUP, RAY_GROUP, RAY_VERSION, VERSION, owner_label
from ..status import is_settled
from . import datapipeline, modeldeployment, trainingjob
from .jobs import FINISHED, WAITS_FOR

# kind -> its reconcile, for the resync loop.
RECONCILERS = {
    datapipeline.KIND: datapipeline.reconcile_datapipeline,
    trainingjob.KIND: trainingjob.reconcile_trainingjob,
    modeldeployment.KIND: modeldeployment.reconcile_modeldeployment,
}
# A RayJob's owner label -> the handler following its status.
RAYJOB_OWNERS = {
    owner_label(datapipeline.KIND): (datapipeline.KIND, datapipeline.datapipeline_child_status),
    owner_label(trainingjob.KIND): (trainingjob.KIND, trainingjob.trainingjob_child_status),
}


async def datapipelines_watch(**kwargs: Any) -> None:
    """A DataPipeline event: reconcile it, and wake the TrainingJobs waiting for it."""
    await datapipeline.datapipeline_event(**kwargs)
    await trainingjob.trainingjob_data_changed(**kwargs)


async def trainingjobs_watch(**kwargs: Any) -> None:
    """A TrainingJob event: reconcile it, and wake the ModelDeployments serving its model."""
    await trainingjob.trainingjob_event(**kwargs)
    await modeldeployment.modeldeployment_model_changed(**kwargs)


async def job_index(
    body: kopf.Body, spec: Any, status: Any, namespace: str, name: str, **_: Any
) -> dict[tuple[str, str, str], Any]:
    """One kopf index per job kind (kopf's cost is per index function and event, so one function fills both):

    * (FINISHED, namespace, name) -> True for a DataPipeline or TrainingJob finished for good. kopf fills its
      indices from the initial listing before any handler runs, so at a restart the finished jobs' RayJobs are
      dropped without a read of the job, whichever watch delivers first;
    * (WAITS_FOR, namespace, DataPipeline name) -> name of a TrainingJob that has not started and reads it.

    A coroutine: kopf runs a plain function in a thread pool, a hand-over that costs more than the function."""
    entries: dict[tuple[str, str, str], Any] = {}
    meta, status = body.get("metadata") or {}, status or {}
    if is_settled(body.get("kind", ""), status, meta.get("generation")):
        entries[(FINISHED, namespace, name)] = True
    ref = (spec or {}).get("dataRef") or {}
    if body.get("kind") == trainingjob.KIND and ref.get("name") and not status.get("childName"):
        entries[(WAITS_FOR, namespace, ref["name"])] = name
    return entries


async def rayjobs_watch(labels: Any, namespace: str, **kwargs: Any) -> None:
    """A RayJob event: its owner (named by its label) follows its status, unless the owner has finished for good
    (KubeRay touching a finished RayJob, a restart re-listing it)."""
    for label, (kind, follow) in RAYJOB_OWNERS.items():
        index: kopf.Index = kwargs[f"{kind.lower()}_index"]
        if label in labels and (FINISHED, namespace, labels[label]) not in index:
            await follow(labels=labels, namespace=namespace, **kwargs)


def register_all(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the handlers of all three kinds: watch events and indices only (no finalizer, no annotations)."""
    kopf.on.event(GROUP, VERSION, datapipeline.PLURAL, registry=registry)(datapipelines_watch)
    kopf.on.event(GROUP, VERSION, trainingjob.PLURAL, registry=registry)(trainingjobs_watch)
    kopf.on.event(GROUP, VERSION, modeldeployment.PLURAL, registry=registry)(modeldeployment.modeldeployment_event)
    kopf.on.event(RAY_GROUP, RAY_VERSION, "rayjobs", registry=registry)(rayjobs_watch)
    owned = {owner_label(modeldeployment.KIND): kopf.PRESENT}
    kopf.on.event(RAY_GROUP, RAY_VERSION, "rayservices", labels=owned, registry=registry)(
        modeldeployment.modeldeployment_child_status
    )
    for module in (datapipeline, trainingjob):
        kopf.index(GROUP, VERSION, module.PLURAL, id=f"{module.KIND.lower()}_index", registry=registry)(job_index)
    kopf.index(GROUP, VERSION, modeldeployment.PLURAL, registry=registry)(modeldeployment.modeldeployment_model_refs)


__all__ = ["RECONCILERS", "register_all"]
