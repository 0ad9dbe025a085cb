"""The operator's handlers, one module per kind; `register_all` puts kopf's into a registry, `child_informers`
builds the watches of the children.

kopf watches our three kinds: one watch-event handler per kind, which calls every kind's reaction to it (kopf's
cost is per handler invocation: its arguments, its logging context). The children (RayJobs, RayServices) are
watched by the operator's own informer (handlers/informer.py), which hands each change to its owner's kind.
"""

from __future__ import annotations

import functools
from typing import Any

import kopf

from ..config import OperatorConfig, is_namespace_pattern
from ..constants import CHILD_PLURALS, GROUP, LABEL_MANAGED_BY, MANAGED_BY_VALUE, VERSION, owner_label
from . import datapipeline, modeldeployment, trainingjob
from .common import OperatorContext, Reconcile, on_child_event, sync_children
from .informer import Informer
from .kube import RAYJOBS, RAYSERVICES, Resource

# kind -> its reconcile, for the resync loop.
RECONCILERS: dict[str, Reconcile] = {
    datapipeline.KIND: datapipeline.reconcile_datapipeline,
    trainingjob.KIND: trainingjob.reconcile_trainingjob,
    modeldeployment.KIND: modeldeployment.reconcile_modeldeployment,
}
# Child resource type -> the kinds that own children of that type (found by their owner label).
CHILD_OWNERS: dict[Resource, tuple[str, ...]] = {
    resource: tuple(kind for kind, plural in CHILD_PLURALS.items() if plural == resource.plural)
    for resource in (RAYJOBS, RAYSERVICES)
}
# Only our children are listed and watched (a server-side filter): not every RayJob and RayService in the cluster.
CHILD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"


async def datapipelines_watch(**kwargs: Any) -> None:
    """A DataPipeline event: reconcile it, and wake the TrainingJobs waiting for it."""
    await datapipeline.datapipeline_event(**kwargs)
    await trainingjob.trainingjob_data_changed(**kwargs)


async def trainingjobs_watch(**kwargs: Any) -> None:
    """A TrainingJob event: reconcile it, and wake the ModelDeployments serving its model."""
    await trainingjob.trainingjob_event(**kwargs)
    await modeldeployment.modeldeployment_model_changed(**kwargs)


async def child_event(
    ctx: OperatorContext, owners: tuple[str, ...], event_type: str, child: dict[str, Any], listing: bool
) -> None:
    """A child's change, handed to the kind its owner label names."""
    labels = (child.get("metadata") or {}).get("labels") or {}
    for kind in owners:
        owner = labels.get(owner_label(kind))
        if owner:
            await on_child_event(ctx, kind, owner, child, event_type, RECONCILERS[kind], listing=listing)


def child_informers(ctx: OperatorContext) -> list[Informer]:
    """The watches of the children: per child type, one per watched namespace (exact names), else one over the
    cluster (all namespaces, or namespace patterns matched on the client)."""
    names = ctx.config.watch_namespaces
    patterns = names if any(is_namespace_pattern(ns) for ns in names) else ()
    scopes: tuple[str | None, ...] = (None,) if patterns or not names else names
    informers = []
    for resource, owners in CHILD_OWNERS.items():
        for namespace in scopes:
            informer = Informer(
                ctx.api,
                resource,
                namespace,
                CHILD_SELECTOR,
                on_event=functools.partial(child_event, ctx, owners),
                on_synced=functools.partial(_synced, ctx, resource.plural, informers),
                namespace_patterns=patterns,
            )
            informers.append(informer)
    return informers


async def _synced(ctx: OperatorContext, plural: str, informers: list[Informer]) -> None:
    """An informer finished its first listing: once all of that child type have, the store is complete."""
    if all(i.synced for i in informers if i.resource.plural == plural):
        await sync_children(ctx, plural)


def register_all(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register kopf's handlers of the three kinds: watch events only (no finalizer, no annotations, no indices)."""
    kopf.on.event(GROUP, VERSION, datapipeline.PLURAL, registry=registry)(datapipelines_watch)
    kopf.on.event(GROUP, VERSION, trainingjob.PLURAL, registry=registry)(trainingjobs_watch)
    kopf.on.event(GROUP, VERSION, modeldeployment.PLURAL, registry=registry)(modeldeployment.modeldeployment_event)


__all__ = ["RECONCILERS", "child_informers", "register_all"]
