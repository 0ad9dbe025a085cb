"""Fixtures of the serving integration tests: tiny trained model directories, a local Ray with Serve, an HTTP
client for 127.0.0.1 and a reader of the Prometheus text Ray exports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support.tiny_models import (
    TinyModel,
    build_tiny_chat_model,
    build_tiny_classifier,
    build_tiny_language_model,
)

METRICS_REPORT_INTERVAL_MS = 500


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models in this process run on one thread (as a replica with one CPU does); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A 2-layer transformers GPT-2 trained 250 steps on standard-library docstrings (version v1)."""
    return build_tiny_language_model(tmp_path_factory.mktemp("lm-v1"), version="v1", steps=250, seed=0, batch_size=12)


@pytest.fixture(scope="session")
def tiny_lm_canary(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A second, differently trained GPT-2 (version v2) to serve as the canary."""
    return build_tiny_language_model(tmp_path_factory.mktemp("lm-v2"), version="v2", steps=40, seed=1)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A 2-label GPT2ForSequenceClassification (does a docstring line mention "return"?)."""
    return build_tiny_classifier(tmp_path_factory.mktemp("cls-v1"), version="c1", steps=120, seed=0)


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face save_pretrained directory: tiny random Llama, BPE tokenizer, chat template."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("chat"))


@dataclass(frozen=True)
class LocalRay:
    """The module's local Ray: Serve's HTTP port and the node's Prometheus endpoint."""

    http_port: int
    metrics_url: str


@contextlib.contextmanager
def started_ray(direct_ingress: bool = False) -> Iterator[LocalRay]:
    """Ray (2 CPUs, no dashboard) and Serve on 127.0.0.1, metrics exported every 0.5 s; with direct_ingress its
    ingress replicas also answer HTTP themselves on ports just above Serve's proxy port."""
    import ray
    from kubeforge_trainer.serve import local_metrics_url
    from kubeforge_trainer.serve.local import enable_direct_ingress
    from ray import serve

    saved = dict(os.environ)
    http_port = free_port()
    if direct_ingress:
        enable_direct_ingress(http_port)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _metrics_export_port=free_port(),
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        yield LocalRay(http_port, local_metrics_url())
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[LocalRay]:
    """A local Ray with Serve's proxy for one test module."""
    with started_ray() as ray_:
        yield ray_


@pytest.fixture(scope="module")
def direct_ray() -> Iterator[LocalRay]:
    """A local Ray whose ingress replicas answer HTTP directly (Serve's direct ingress) for one test module."""
    with started_ray(direct_ingress=True) as ray_:
        yield ray_


def model_deployment(name: str, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment resource as the operator would pass it."""
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def deployment_resource() -> Callable[..., dict[str, Any]]:
    """Builder of ModelDeployment resources."""
    return model_deployment


@dataclass
class Reply:
    """An HTTP answer."""

    status: int
    headers: requests.structures.CaseInsensitiveDict
    text: str

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.text)


class Http:
    """Plain HTTP against one app on 127.0.0.1."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None, timeout: float = 60) -> Reply:
        """Send JSON (or raw bytes) and read the whole answer."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response = requests.request(method, self.base_url + path, data=data, headers=headers, timeout=timeout)
        return Reply(response.status_code, response.headers, response.text)

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Reply:
        """POST JSON."""
        return self.request("POST", path, body, raw)

    def get(self, path: str) -> Reply:
        """GET."""
        return self.request("GET", path)

    def stream(self, path: str, body: Any) -> tuple[Reply, list[str]]:
        """POST and read a server-sent event stream; returns the reply and each event's data field."""
        response = requests.post(self.base_url + path, json=body, stream=True, timeout=60)
        events = [
            line[len("data: ") :] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")
        ]
        return Reply(response.status_code, response.headers, ""), events

    def concurrently(self, calls: list[Callable[[], Reply]], concurrency: int) -> list[Reply]:
        """Run calls on `concurrency` threads; results in call order."""
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda call: call(), calls))


@pytest.fixture(scope="module")
def http_for() -> Callable[[str], Http]:
    """Http client factory for a base URL."""
    return Http


class Metrics:
    """Reads Ray's Prometheus endpoint and sums series over the labels a query leaves open (replicas, workers)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def scrape(self) -> list[tuple[str, dict[str, str], float]]:
        """Every kubeforge_inference sample: (sample name, labels, value)."""
        text = requests.get(self.url, timeout=30).text
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            if "kubeforge_inference_" in family.name
            for s in family.samples
        ]

    def totals(self, sample: str, by: tuple[str, ...], **where: str) -> Counter:
        """Sum of a sample's values grouped by the `by` labels, over series matching `where`."""
        out: Counter = Counter()
        for name, labels, value in self.scrape():
            if name == sample and all(labels.get(k) == v for k, v in where.items()):
                out[tuple(labels.get(k, "") for k in by)] += value
        return out

    def settled(self, timeout: float = 60) -> list[tuple[str, dict[str, str], float]]:
        """Wait until two scrapes several report intervals apart agree (everything recorded is exported)."""
        deadline = time.monotonic() + timeout
        previous = self.scrape()
        while time.monotonic() < deadline:
            time.sleep(6 * METRICS_REPORT_INTERVAL_MS / 1000)
            current = self.scrape()
            if _by_series(current) == _by_series(previous):
                return current
            previous = current
        raise AssertionError("Ray's metrics did not settle")

    def wait_for_delta(
        self, before: Counter, expected: Counter, sample: str, by: tuple[str, ...], timeout: float = 60, **where: str
    ) -> Counter:
        """Poll until totals(...) - before equals expected (or the timeout passes); returns the last delta."""
        deadline = time.monotonic() + timeout
        while True:
            delta = self.totals(sample, by, **where)
            delta.subtract(before)
            delta = Counter({k: v for k, v in delta.items() if v})
            if delta == expected or time.monotonic() > deadline:
                return delta
            time.sleep(METRICS_REPORT_INTERVAL_MS / 1000)


def _by_series(samples: list[tuple[str, dict[str, str], float]]) -> dict:
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}


@pytest.fixture(scope="module")
def metrics(local_ray: LocalRay) -> Metrics:
    """Reader of the module's Ray metrics endpoint."""
    return Metrics(local_ray.metrics_url)


@pytest.fixture(scope="module")
def direct_metrics(direct_ray: LocalRay) -> Metrics:
    """Reader of the metrics endpoint of the module's direct-ingress Ray."""
    return Metrics(direct_ray.metrics_url)
