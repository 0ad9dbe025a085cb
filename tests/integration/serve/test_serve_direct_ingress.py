"""spec.ingress: direct on a real local Ray Serve: the replica answers HTTP on its own port, with the same API,
errors, streaming and metrics as through Serve's proxy."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kubeforge_trainer.serve import serve_locally, stop_locally
from support.tiny_models import TinyModel
from test_serve_http import BAD_REQUESTS  # this folder is on sys.path (no package)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUESTS = "ray_kubeforge_inference_requests_total"
BODY = {"prompt": "Return a new list of", "max_tokens": 8, "temperature": 0}


def resource(deployment_resource, name: str, model: TinyModel, ingress: str):
    """A one-replica deployment of the tiny model with the given ingress."""
    return deployment_resource(
        name,
        modelUri=str(model.path),
        ingress=ingress,
        replicas={"min": 1, "max": 1},
        resources={"cpu": "250m", "memory": "256Mi"},
        batching={"enabled": True, "maxBatchSize": 4, "maxWaitMs": 5},
    )


@pytest.fixture(scope="module")
def both(direct_ray, tiny_lm: TinyModel, deployment_resource, http_for):
    """The same model deployed twice on one Ray: behind Serve's proxy, and with direct ingress."""
    proxied = serve_locally(
        {"resource": resource(deployment_resource, "proxied", tiny_lm, "proxy"), "modelVersion": "v1"},
        http_port=direct_ray.http_port,
        route_prefix="/proxied",
    )
    direct = serve_locally(
        {"resource": resource(deployment_resource, "direct", tiny_lm, "direct"), "modelVersion": "v1"},
        http_port=direct_ray.http_port,
        route_prefix="/direct",
    )
    yield http_for(proxied), http_for(direct)
    stop_locally("proxied")
    stop_locally("direct")


def port_of(url: str) -> int:
    """The port of a base URL."""
    return int(url.split(":")[2].split("/")[0])


def test_the_direct_replica_answers_on_its_own_port_like_the_proxy(both, direct_ray) -> None:
    proxied, direct = both
    assert port_of(proxied.base_url) == direct_ray.http_port
    assert direct_ray.http_port < port_of(direct.base_url) <= direct_ray.http_port + 16
    assert direct.base_url.endswith("/direct")
    # Greedy decoding: both paths give the same completion of the same model.
    via_proxy, via_replica = proxied.post("/v1/completions", BODY), direct.post("/v1/completions", BODY)
    assert via_proxy.status == via_replica.status == 200
    assert via_replica.headers["x-kubeforge-model-version"] == "v1"
    assert via_replica.json()["choices"][0]["text"] == via_proxy.json()["choices"][0]["text"]
    assert via_replica.json()["usage"]["completion_tokens"] == 8
    models = direct.get("/v1/models")
    assert models.status == 200 and models.json()["data"][0]["id"] == "direct"
    assert direct.get("/ready").json()["status"] == "ready"


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
def test_direct_ingress_answers_every_bad_request_with_json(both, method, path, body, status, code) -> None:
    _, direct = both
    raw = body if isinstance(body, bytes) else None
    reply = direct.request(method, path, None if raw is not None else body, raw)
    assert reply.status == status, reply.text
    assert reply.json()["error"]["code"] == code


def test_direct_ingress_streams_server_sent_events(both) -> None:
    _, direct = both
    reply, events = direct.stream("/v1/completions", {**BODY, "stream": True})
    assert reply.status == 200
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert streamed == direct.post("/v1/completions", BODY).json()["choices"][0]["text"]


def test_direct_ingress_requests_are_counted_exactly(both, direct_metrics) -> None:
    _, direct = both
    metrics = direct_metrics
    where = {"model": "direct"}
    metrics.settled()  # the earlier tests' requests are all exported
    before = metrics.totals(REQUESTS, ("route", "status_code"), **where)
    replies = direct.concurrently([lambda: direct.post("/v1/completions", BODY)] * 12, concurrency=4)
    replies.append(direct.post("/v1/completions", raw=b"[]"))
    sent = Counter(("/v1/completions", str(r.status)) for r in replies)
    assert sent == Counter({("/v1/completions", "200"): 12, ("/v1/completions", "400"): 1})
    assert metrics.wait_for_delta(before, sent, REQUESTS, ("route", "status_code"), **where) == sent
