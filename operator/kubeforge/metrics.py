"""The operator's Prometheus metrics: reconciles by kind and result, their duration, resources by phase, retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .constants import KINDS

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended", "Deploying", "Ready", "Degraded")

# Results of one reconcile: ok (acted or nothing to do), waiting (for a dependency), invalid (ValidationFailed),
# conflict (a concurrent write; retried), error (transient API error; retried with backoff).
RESULTS = ("ok", "waiting", "invalid", "conflict", "error")

RECONCILES = Counter(
    "kubeforge_reconcile_total",
    "Reconciles of kubeforge resources, by kind and result.",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "kubeforge_reconcile_duration_seconds",
    "Time one reconcile of a kubeforge resource took, API calls included.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter(
    "kubeforge_retries_total",
    "Re-runs of failed jobs started under failurePolicy.maxRetries, by kind.",
    ["kind"],
)


class PhaseTracker(Collector):
    """Remembers each resource's last phase and exports `kubeforge_resources{kind, phase}` (zeros included)."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        """Record the phase of one resource."""
        with self._lock:
            if phase:
                self._phases[(kind, namespace, name)] = phase
            else:
                self._phases.pop((kind, namespace, name), None)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop a deleted resource."""
        self.set(kind, namespace, name, None)

    def counts(self) -> dict[tuple[str, str], int]:
        """{(kind, phase): resources}, every kind and phase included."""
        counts = {(kind, phase): 0 for kind in KINDS for phase in PHASES}
        with self._lock:
            for (kind, _, _), phase in self._phases.items():
                counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauge family, computed at scrape time."""
        family = GaugeMetricFamily(
            "kubeforge_resources",
            "kubeforge resources by kind and phase, as this operator last saw them.",
            labels=["kind", "phase"],
        )
        for (kind, phase), count in sorted(self.counts().items()):
            family.add_metric([kind, phase], count)
        yield family


PHASE_TRACKER = PhaseTracker()
REGISTRY.register(PHASE_TRACKER)


def start_metrics_server(port: int, registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve /metrics on the port in a background thread; port 0 turns the endpoint off."""
    if port <= 0:
        return None
    return start_http_server(port, registry=registry)
