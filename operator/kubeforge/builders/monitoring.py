"""Prometheus Operator PodMonitor / ServiceMonitor for a ModelDeployment's Ray pods (pure)."""

from __future__ import annotations

from typing import Any

from ..api import ModelDeployment
from ..constants import owner_label
from .common import child_labels, resource_metadata

MONITORING_GROUP = "monitoring.coreos.com"
MONITORING_VERSION = "v1"
MONITOR_PLURALS = {"PodMonitor": "podmonitors", "ServiceMonitor": "servicemonitors"}
METRICS_PATH = "/metrics"


def monitor_name(name: str) -> str:
    """Name of the monitor of a ModelDeployment."""
    return f"{name}-ray"


def build_monitor(resource: ModelDeployment) -> dict[str, Any]:
    """A PodMonitor scraping every Ray pod's metrics port, or a ServiceMonitor scraping the head Service's.

    Ray exports its own and the Serve application's metrics on each node's metrics port (8080, /metrics).
    """
    meta = resource_metadata(resource)
    monitoring = resource.spec.monitoring
    selector = {"matchLabels": {owner_label(resource.kind): meta["name"]}}
    endpoint = {"port": "metrics", "path": METRICS_PATH, "interval": monitoring.interval}
    spec: dict[str, Any] = {"selector": selector}
    if monitoring.kind == "PodMonitor":
        spec["podMetricsEndpoints"] = [endpoint]
    else:
        spec["endpoints"] = [endpoint]
    return {
        "apiVersion": f"{MONITORING_GROUP}/{MONITORING_VERSION}",
        "kind": monitoring.kind,
        "metadata": {
            "name": monitor_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {**monitoring.labels, **child_labels(resource.kind, meta["name"])},
        },
        "spec": spec,
    }
