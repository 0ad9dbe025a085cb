"""kopf handlers, one module per kind; `register_all` puts them into a registry.

One watch-event handler per watched resource type, which calls every kind's reaction to it: kopf's cost is per
handler invocation (its arguments, its logging context), so an event costs one, whatever reacts to it.
"""

from __future__ import annotations

from typing import Any

import kopf

from ..config import OperatorConfig
from ..constants import GROUP, RAY_GROUP, RAY_VERSION, VERSION, owner_label
from . import datapipeline, modeldeployment, trainingjob

# kind -> its reconcile, for the resync loop.
RECONCILERS = {
    datapipeline.KIND: datapipeline.reconcile_datapipeline,
    trainingjob.KIND: trainingjob.reconcile_trainingjob,
    modeldeployment.KIND: modeldeployment.reconcile_modeldeployment,
}
# A RayJob's owner label -> the handler following its status.
RAYJOB_OWNERS = {
    owner_label(datapipeline.KIND): datapipeline.datapipeline_child_status,
    owner_label(trainingjob.KIND): trainingjob.trainingjob_child_status,
}


async def datapipelines_watch(**kwargs: Any) -> None:
    """A DataPipeline event: reconcile it, and wake the TrainingJobs waiting for it."""
    await datapipeline.datapipeline_event(**kwargs)
    await trainingjob.trainingjob_data_changed(**kwargs)


async def trainingjobs_watch(**kwargs: Any) -> None:
    """A TrainingJob event: reconcile it, and wake the ModelDeployments serving its model."""
    await trainingjob.trainingjob_event(**kwargs)
    await modeldeployment.modeldeployment_model_changed(**kwargs)


async def rayjobs_watch(labels: Any, **kwargs: Any) -> None:
    """A RayJob event: its owner (named by its label) follows its status."""
    for label, follow in RAYJOB_OWNERS.items():
        if label in labels:
            await follow(labels=labels, **kwargs)


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
    kopf.index(GROUP, VERSION, trainingjob.PLURAL, registry=registry)(trainingjob.trainingjob_data_refs)
    kopf.index(GROUP, VERSION, modeldeployment.PLURAL, registry=registry)(modeldeployment.modeldeployment_model_refs)


__all__ = ["RECONCILERS", "register_all"]
