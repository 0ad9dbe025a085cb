"""kopf handlers, one module per kind; `register_all` puts them into a registry."""

from __future__ import annotations

import kopf

from ..config import OperatorConfig
from . import datapipeline, modeldeployment, trainingjob

# kind -> its reconcile, for the resync loop.
RECONCILERS = {
    datapipeline.KIND: datapipeline.reconcile_datapipeline,
    trainingjob.KIND: trainingjob.reconcile_trainingjob,
    modeldeployment.KIND: modeldeployment.reconcile_modeldeployment,
}


def register_all(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the handlers of all three kinds."""
    datapipeline.register(registry, config)
    trainingjob.register(registry, config)
    modeldeployment.register(registry, config)


__all__ = ["RECONCILERS", "register_all"]
