"""Prometheus metrics of the inference app, recorded through Ray's metrics pipeline.

Each replica records into ``ray.serve.metrics`` objects; Ray's metrics agent on every node exports them on the
node's metrics port (KubeRay: container port ``metrics``, 8080, path ``/metrics``), one series per replica, with
Ray's ``ray_`` prefix and ``_total`` on counters. Summing over the ``replica`` label gives deployment-wide values,
so nothing is lost or double counted however many replicas run. PROMETHEUS_NAMES lists what Prometheus sees.

Counters, gauges and histogram bucket counts are exact. A histogram's ``_sum`` is not: Ray rebuilds it from bucket
midpoints, so use ``histogram_quantile`` over ``_bucket`` (or ``_count``) rather than ``_sum / _count`` averages.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

PREFIX = "kubeforge_inference_"
RAY_PREFIX = "ray_"

REQUESTS = PREFIX + "requests"
REQUEST_LATENCY = PREFIX + "request_latency_seconds"
TIME_TO_FIRST_TOKEN = PREFIX + "time_to_first_token_seconds"
INTER_TOKEN_LATENCY = PREFIX + "inter_token_latency_seconds"
TOKENS_GENERATED = PREFIX + "tokens_generated"
PROMPT_TOKENS = PREFIX + "prompt_tokens"
BATCH_SIZE = PREFIX + "batch_size"
QUEUE_DEPTH = PREFIX + "queue_depth"
MODEL_LOAD_SECONDS = PREFIX + "model_load_seconds"
# vLLM's gauges of the same meaning are vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc
REQUESTS_RUNNING = PREFIX + "num_requests_running"
REQUESTS_WAITING = PREFIX + "num_requests_waiting"
KV_CACHE_USAGE = PREFIX + "kv_cache_usage_perc"

LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TOKEN_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
BATCH_SIZE_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024, 4096]

# name -> (Prometheus type, labels besides Ray's and Serve's own: application, deployment, replica, WorkerId, ...)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    REQUESTS: ("counter", ("model", "version", "route", "status_code"), "HTTP requests answered."),
    REQUEST_LATENCY: ("histogram", ("model", "version", "route", "status_code"), "Request latency in seconds."),
    TIME_TO_FIRST_TOKEN: (
        "histogram",
        ("model", "version", "adapter"),
        "Seconds from arrival at the replica to the first token.",
    ),
    INTER_TOKEN_LATENCY: (
        "histogram",
        ("model", "version", "adapter"),
        "Seconds between consecutive generated tokens.",
    ),
    TOKENS_GENERATED: ("counter", ("model", "version", "adapter"), "Tokens generated."),
    PROMPT_TOKENS: ("counter", ("model", "version", "adapter"), "Prompt tokens processed."),
    BATCH_SIZE: (
        "histogram",
        ("model", "version"),
        "Sequences in the running batch at each decode step (generation), or inputs per batch (classification).",
    ),
    QUEUE_DEPTH: ("gauge", ("model", "version"), "Prompts or inputs in a replica not yet in a running batch."),
    MODEL_LOAD_SECONDS: ("gauge", ("model", "version"), "Seconds the replica took to fetch and load its model."),
    REQUESTS_RUNNING: ("gauge", ("model", "version"), "Sequences in the replica's running (continuous) batch."),
    REQUESTS_WAITING: ("gauge", ("model", "version"), "Sequences submitted to the engine, waiting for a batch row."),
    KV_CACHE_USAGE: (
        "gauge",
        ("model", "version"),
        "KV cache slots the running batch holds (padding included), as a fraction of maxBatchSize x context.",
    ),
}
NO_ADAPTER = ""  # adapter label of the base model


def prometheus_name(name: str) -> str:
    """The name Prometheus scrapes for a metric recorded as `name` (histograms add _bucket, _sum and _count)."""
    kind = METRICS[name][0]
    return RAY_PREFIX + name + ("_total" if kind == "counter" else "")


PROMETHEUS_NAMES = {name: prometheus_name(name) for name in METRICS}


def _metric(name: str, boundaries: Sequence[float] | None = None):  # -> ray.serve.metrics.Metric
    from ray.serve import metrics as serve_metrics

    kind, labels, description = METRICS[name]
    if kind == "counter":
        return serve_metrics.Counter(name, description=description, tag_keys=labels)
    if kind == "gauge":
        return serve_metrics.Gauge(name, description=description, tag_keys=labels)
    return serve_metrics.Histogram(name, description=description, boundaries=list(boundaries or []), tag_keys=labels)


class RequestMetrics:
    """Metrics of every HTTP request: its version, route, status code and latency."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.requests = _metric(REQUESTS)
        self.latency = _metric(REQUEST_LATENCY, LATENCY_BUCKETS_S)

    def request(self, version: str, route: str, status_code: int, seconds: float) -> None:
        """Count one answered request."""
        tags = {"model": self.model, "version": version, "route": route, "status_code": str(status_code)}
        self.requests.inc(1, tags=tags)
        self.latency.observe(seconds, tags=tags)


class ModelMetrics:
    """Metrics of one model version in a replica: token timings and counts, batch sizes, queue depth, load time."""

    def __init__(self, model: str, version: str) -> None:
        self.tags = {"model": model, "version": version}
        self.ttft = _metric(TIME_TO_FIRST_TOKEN, LATENCY_BUCKETS_S)
        self.itl = _metric(INTER_TOKEN_LATENCY, TOKEN_BUCKETS_S)
        self.tokens = _metric(TOKENS_GENERATED)
        self.prompt_tokens = _metric(PROMPT_TOKENS)
        self.batch_size = _metric(BATCH_SIZE, BATCH_SIZE_BUCKETS)
        self.queue_depth = _metric(QUEUE_DEPTH)
        self.load_seconds = _metric(MODEL_LOAD_SECONDS)
        self.running = _metric(REQUESTS_RUNNING)
        self.waiting = _metric(REQUESTS_WAITING)
        self.kv_cache = _metric(KV_CACHE_USAGE)
        self.queue_depth.set(0, tags=self.tags)
        self.engine(0, 0, 0.0)

    def engine(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        """Record the engine's state after a decode step."""
        self.running.set(running, tags=self.tags)
        self.waiting.set(waiting, tags=self.tags)
        self.kv_cache.set(kv_cache_usage, tags=self.tags)

    def model_loaded(self, seconds: float) -> None:
        """Record how long loading took."""
        self.load_seconds.set(seconds, tags=self.tags)

    def queued(self, depth: int) -> None:
        """Record the current number of waiting prompts or inputs."""
        self.queue_depth.set(depth, tags=self.tags)

    def batch(self, size: int) -> None:
        """Record one batch."""
        self.batch_size.observe(size, tags=self.tags)

    def generation(
        self, prompt_tokens: int, created_at: float, token_times: Sequence[float], adapter: str | None = None
    ) -> None:
        """Record one finished generation: token counts, time to first token, inter-token latencies."""
        tags = {**self.tags, "adapter": adapter or NO_ADAPTER}
        self.prompt_tokens.inc(prompt_tokens, tags=tags)
        if not token_times:
            return
        self.tokens.inc(len(token_times), tags=tags)
        self.ttft.observe(token_times[0] - created_at, tags=tags)
        for earlier, later in itertools.pairwise(token_times):
            self.itl.observe(later - earlier, tags=tags)

    def classified(self, prompt_tokens: int) -> None:
        """Record the prompt tokens of one classified input."""
        self.prompt_tokens.inc(prompt_tokens, tags={**self.tags, "adapter": NO_ADAPTER})
