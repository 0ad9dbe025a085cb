"""The inference app on a real local Ray Serve over HTTP on 127.0.0.1: API contract, every error status, streaming,
canary split, exact metrics across replicas, batching under concurrency, backpressure and an int8 classifier."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
import requests
from kubeforge.api.modeldeployment import GenerationDefaults
from kubeforge_trainer.serve import serve_locally
from kubeforge_trainer.serve.protocol import MAX_BODY_BYTES, CompletionRequest
from kubeforge_trainer.serve.runner import ModelRunner
from support.tiny_models import TinyModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANARY_PERCENT = 30
REQUESTS = "ray_kubeforge_inference_requests_total"
BY_REQUEST = ("version", "route", "status_code")
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def gpt(local_ray, tiny_lm: TinyModel, tiny_lm_canary: TinyModel, deployment_resource, http_for):
    """gpt: v1 on two replicas, canary v2 taking 30%, batches of up to 8 gathered for 50 ms."""
    resource = deployment_resource(
        "gpt",
        modelUri=str(tiny_lm.path),
        replicas={"min": 2, "max": 2, "maxOngoingRequests": 16, "maxQueuedRequests": 64},
        resources={"cpu": "250m", "memory": "256Mi"},
        batching={"enabled": True, "maxBatchSize": 8, "maxWaitMs": 50},
        generation={"maxTokens": 16, "temperature": 0.8, "topP": 0.95},
        canary={"modelUri": str(tiny_lm_canary.path), "trafficPercent": CANARY_PERCENT},
    )
    args = {"resource": resource, "modelUri": str(tiny_lm.path), "modelVersion": "v1", "canaryModelVersion": "v2"}
    return http_for(serve_locally(args, http_port=local_ray.http_port, route_prefix="/gpt"))


@pytest.fixture(scope="module")
def tight(local_ray, tiny_lm: TinyModel, deployment_resource, http_for):
    """tight: one replica taking one request at a time with a queue of one, no batching."""
    resource = deployment_resource(
        "tight",
        modelUri=str(tiny_lm.path),
        replicas={"min": 1, "max": 1, "maxOngoingRequests": 1, "maxQueuedRequests": 1},
        resources={"cpu": "250m", "memory": "256Mi"},
        batching={"enabled": False},
    )
    args = {"resource": resource, "modelVersion": "t1"}
    return http_for(serve_locally(args, http_port=local_ray.http_port, route_prefix="/tight"))


@pytest.fixture(scope="module")
def classifier(local_ray, tiny_classifier: TinyModel, deployment_resource, http_for):
    """cls: the tiny classifier, int8-quantised."""
    resource = deployment_resource(
        "cls",
        modelUri=str(tiny_classifier.path),
        resources={"cpu": "250m", "memory": "256Mi"},
        quantization="int8",
    )
    return http_for(serve_locally({"resource": resource}, http_port=local_ray.http_port, route_prefix="/cls"))


@pytest.fixture(scope="module")
def runner_v1(tiny_lm: TinyModel) -> ModelRunner:
    """The v1 model loaded in this process, to compare the server with."""
    return ModelRunner.load(str(tiny_lm.path), "v1")


def in_process_greedy(runner: ModelRunner, prompts: list[str], max_tokens: int) -> list[str]:
    """What the model generates greedily when called directly."""
    request = CompletionRequest(prompts=tuple(prompts), prompt_is_list=True, max_tokens=max_tokens, temperature=0.0)
    tasks = runner.prepare_completion(request, GenerationDefaults())
    runner.generate(tasks)
    return [t.text for t in tasks]


def test_health_ready_and_models(gpt) -> None:
    assert (gpt.get("/health").status, gpt.get("/health").json()) == (200, {"status": "ok"})
    ready = gpt.get("/ready")
    assert (ready.status, ready.json()["versions"]) == (200, ["v1", "v2"])
    models = gpt.get("/v1/models")
    assert models.status == 200
    data = models.json()["data"]
    assert [(m["name"], m["version"], m["role"], m["trafficPercent"]) for m in data] == [
        ("gpt", "v1", "stable", 100 - CANARY_PERCENT),
        ("gpt", "v2", "canary", CANARY_PERCENT),
    ]
    assert all(m["task"] == "languageModeling" and m["contextLength"] == 64 for m in data)
    assert all(m["quantization"] == "none" and m["loadSeconds"] >= 0 for m in data)


def test_completion_contract_matches_the_model_called_in_process(gpt, runner_v1: ModelRunner) -> None:
    prompt = "Return the number of"
    reply = gpt.post(COMPLETIONS, {"model": "gpt:v1", "prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["x-kubeforge-model-version"] == "v1"
    body = reply.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert (body["model"], body["version"]) == ("gpt", "v1")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    assert choice["text"] == in_process_greedy(runner_v1, [prompt], 8)[0]
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(runner_v1.encode(prompt, special_tokens=False))
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_several_prompts_in_one_request(gpt, runner_v1: ModelRunner) -> None:
    prompts = ["Open a file", "The", "Create a new socket object and"]
    reply = gpt.post(COMPLETIONS, {"model": "v1", "prompt": prompts, "max_tokens": 6, "temperature": 0})
    assert reply.status == 200
    choices = reply.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["text"] for c in choices] == in_process_greedy(runner_v1, prompts, 6)


def test_seed_makes_sampling_reproducible_and_defaults_apply(gpt) -> None:
    body = {"model": "gpt:v1", "prompt": "Return", "temperature": 1.0, "seed": 1234}
    first, second = gpt.post(COMPLETIONS, body).json(), gpt.post(COMPLETIONS, body).json()
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["usage"]["completion_tokens"] <= 16  # generation.maxTokens of the deployment


def test_stop_string_ends_the_completion(gpt, runner_v1: ModelRunner) -> None:
    prompt = "Return a new"
    full = in_process_greedy(runner_v1, [prompt], 20)[0]
    stop = full[4:6]
    reply = gpt.post(COMPLETIONS, {"model": "v1", "prompt": prompt, "max_tokens": 20, "temperature": 0, "stop": stop})
    choice = reply.json()["choices"][0]
    assert choice["text"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_streaming_sends_the_same_text_as_server_sent_events(gpt) -> None:
    body = {"model": "gpt:v1", "prompt": "Return the", "max_tokens": 12, "temperature": 0}
    whole = gpt.post(COMPLETIONS, body).json()
    reply, events = gpt.stream(COMPLETIONS, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["version"] == "v1" for c in chunks)
    text_chunks = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == whole["choices"][0]["text"]
    assert text_chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    # (method, path, body (bytes are sent raw), status, error code)
    ("POST", COMPLETIONS, b"{not json", 400, "invalid_json"),
    ("POST", COMPLETIONS, b"", 400, "invalid_json"),
    ("POST", COMPLETIONS, b"\xff\xfe\x00", 400, "invalid_json"),
    ("POST", COMPLETIONS, b'{"prompt": "a", "temperature": NaN}', 400, "invalid_json"),
    ("POST", COMPLETIONS, [1, 2, 3], 400, "invalid_json"),
    ("POST", COMPLETIONS, {}, 400, "missing_field"),
    ("POST", COMPLETIONS, {"prompt": 42}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": ""}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": ["ok", None]}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "max_tokens": 0}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "max_tokens": "ten"}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "temperature": -1}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "top_p": 0}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "top_p": 2}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "stop": [1]}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "stream": "yes"}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "seed": -5}, 400, "invalid_value"),
    ("POST", COMPLETIONS, {"prompt": "a", "n": 3}, 400, "unknown_field"),
    ("POST", COMPLETIONS, {"prompt": "a", "model": "someone-else"}, 404, "model_not_found"),
    ("POST", COMPLETIONS, {"prompt": "word " * 200}, 413, "context_length_exceeded"),
    ("POST", COMPLETIONS, {"prompt": "word " * 200, "stream": True}, 413, "context_length_exceeded"),
    ("POST", COMPLETIONS, {"prompt": "a", "max_tokens": 64}, 422, "context_length_exceeded"),
    ("POST", COMPLETIONS, b"x" * (MAX_BODY_BYTES + 1), 413, "body_too_large"),
    ("POST", "/v1/classify", {"input": "a language model cannot classify"}, 400, "wrong_task"),
    ("GET", COMPLETIONS, None, 405, "method_not_allowed"),
    ("POST", "/v1/models", {}, 405, "method_not_allowed"),
    ("GET", "/v2/nothing-here", None, 404, "not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
def test_bad_requests_get_json_errors(gpt, method: str, path: str, body: Any, status: int, code: str) -> None:
    reply = gpt.request(method, path, raw=body if isinstance(body, bytes) else None, body=body)
    assert reply.status == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["code"] == code and error["message"]
    if status == 405:
        assert reply.headers["allow"] in ("GET", "POST")


def test_random_inputs_never_cause_a_server_error(gpt) -> None:
    rng = random.Random(7)
    values: list[Any] = [None, True, -1, 0, 1, 2.5, 1e300, "", "x", "é" * 3, [], ["a"], [1], {}, {"a": 1}]
    fields = ["prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "seed", "model", "stream_options"]
    statuses = [gpt.post(COMPLETIONS, {"prompt": "Return", "max_tokens": 2}).status]
    for _ in range(60):
        body = {f: rng.choice(values) for f in rng.sample(fields, rng.randint(0, len(fields)))}
        if rng.random() < 0.7:
            body["prompt"] = rng.choice(["a", "Return", "x" * rng.randint(1, 400)])
        statuses.append(gpt.post(COMPLETIONS, body).status)
    assert all(s < 500 for s in statuses), Counter(statuses)
    assert {200, 400} <= set(statuses)


def test_canary_gets_its_share_of_1000_requests(gpt, metrics) -> None:
    where = {"model": "gpt", "route": COMPLETIONS, "status_code": "200"}
    metrics.settled()
    before = metrics.totals(REQUESTS, ("version",), **where)
    calls = [lambda: gpt.post(COMPLETIONS, {"prompt": "The", "max_tokens": 1})] * 1000
    replies = gpt.concurrently(calls, concurrency=16)
    assert Counter(r.status for r in replies) == {200: 1000}
    seen = Counter(r.json()["version"] for r in replies)
    assert sum(seen.values()) == 1000
    # 30% of 1000 is 300 with a binomial standard deviation of 14.5; +-75 is over 5 standard deviations.
    assert abs(seen["v2"] - 10 * CANARY_PERCENT) <= 75, seen
    assert all(r.headers["x-kubeforge-model-version"] == r.json()["version"] for r in replies)
    # Prometheus shows the same split, by version.
    delta = metrics.wait_for_delta(before, Counter({(v,): n for v, n in seen.items()}), REQUESTS, ("version",), **where)
    assert delta == Counter({(v,): n for v, n in seen.items()})


def test_metrics_count_every_request_exactly_across_replicas(gpt, metrics) -> None:
    tokens, ttft = (
        "ray_kubeforge_inference_tokens_generated_total",
        "ray_kubeforge_inference_time_to_first_token_seconds",
    )
    metrics.settled()
    before = metrics.totals(REQUESTS, BY_REQUEST, model="gpt")
    tokens_before = metrics.totals(tokens, ("replica",), model="gpt", version="v1")
    ttft_before = metrics.totals(ttft + "_count", ("version",), model="gpt")
    v1_calls = [lambda: gpt.post(COMPLETIONS, {"model": "v1", "prompt": "Return", "max_tokens": 5})] * 24
    calls = v1_calls + [lambda: gpt.post(COMPLETIONS, {"model": "v2", "prompt": "Return", "max_tokens": 5})] * 3
    calls += [lambda: gpt.post(COMPLETIONS, {"model": "v1", "prompt": "x" * 300})] * 2  # 413 from the model
    calls += [lambda: gpt.post(COMPLETIONS, {"prompt": "a", "top_p": 9})] * 4  # 400 from the ingress
    calls += [lambda: gpt.get("/nowhere")] * 2 + [lambda: gpt.get("/v1/models")] * 3
    replies = gpt.concurrently(calls, concurrency=8)
    stream_reply, events = gpt.stream(COMPLETIONS, {"model": "v2", "prompt": "Open", "max_tokens": 4, "stream": True})
    # A client that leaves in the middle of a stream is still counted, once.
    abandoned = requests.post(
        gpt.base_url + COMPLETIONS,
        json={"model": "v2", "prompt": "Open", "max_tokens": 40, "stream": True},
        stream=True,
        timeout=60,
    )
    next(abandoned.iter_lines())
    abandoned.close()
    assert Counter(r.status for r in replies) == {200: 30, 413: 2, 400: 4, 404: 2}
    assert stream_reply.status == 200 and events[-1] == "[DONE]"
    expected = Counter(
        {
            ("v1", COMPLETIONS, "200"): 24,
            ("v2", COMPLETIONS, "200"): 3 + 2,
            ("v1", COMPLETIONS, "413"): 2,
            ("none", COMPLETIONS, "400"): 4,
            ("none", "unmatched", "404"): 2,
            ("none", "/v1/models", "200"): 3,
        }
    )
    assert metrics.wait_for_delta(before, expected, REQUESTS, BY_REQUEST, model="gpt") == expected
    # Token counts come from the model replicas: both v1 replicas served, and their series add up to the responses.
    v1_usage = [r.json()["usage"]["completion_tokens"] for r in replies[: len(v1_calls)]]
    metrics.settled()
    per_replica = metrics.totals(tokens, ("replica",), model="gpt", version="v1")
    per_replica.subtract(tokens_before)
    per_replica = +per_replica  # keep the replicas that generated tokens in this test
    assert len(per_replica) == 2, per_replica
    assert sum(per_replica.values()) == sum(v1_usage)
    first_tokens = metrics.totals(ttft + "_count", ("version",), model="gpt")
    first_tokens.subtract(ttft_before)
    assert first_tokens[("v1",)] == sum(1 for n in v1_usage if n > 0)


def test_batching_batches_concurrent_requests(gpt, metrics) -> None:
    # Bucket counts of Ray's histograms are exact (their _sum is rebuilt from bucket midpoints, so it is not).
    batches, singles, up_to_three = "batch_size_count", ("batch_size_bucket", "1.0"), ("batch_size_bucket", "3.0")

    def batch_counts() -> Counter:
        counts: Counter = Counter()
        for name, labels, value in metrics.scrape():
            if labels.get("model") != "gpt" or not name.startswith("ray_kubeforge_inference_batch_size"):
                continue
            short = name.removeprefix("ray_kubeforge_inference_")
            if short == batches or (short, labels.get("le")) in (singles, up_to_three):
                counts[(labels["version"], short, labels.get("le"))] += value
        return counts

    metrics.settled()
    before = batch_counts()
    # Four prompts in one request are submitted together: one batch, and it holds all four.
    reply = gpt.post(COMPLETIONS, {"model": "v2", "prompt": ["a", "b", "c", "d"], "max_tokens": 2})
    assert reply.status == 200 and len(reply.json()["choices"]) == 4
    # Sixteen concurrent requests to two replicas with batches of up to 8.
    calls = [lambda: gpt.post(COMPLETIONS, {"model": "v1", "prompt": "The", "max_tokens": 4})] * 16
    assert {r.status for r in gpt.concurrently(calls, concurrency=16)} == {200}
    metrics.settled()
    delta = batch_counts()
    delta.subtract(before)
    # Continuous batching records the running batch at every decode step: the four prompts (two tokens each) were
    # admitted together, so at most two steps ran and the first held all four.
    assert 1 <= delta[("v2", batches, None)] <= 2, delta
    assert delta[("v2", *up_to_three)] <= delta[("v2", batches, None)] - 1, delta
    # One request at a time would take 16 x 4 = 64 steps; requests sharing steps take fewer.
    assert 4 <= delta[("v1", batches, None)] < 64, delta
    assert delta[("v1", batches, None)] - delta[("v1", *singles)] >= 1  # at least one step ran several requests


def test_overload_gets_503_json_and_every_request_is_counted(tight, metrics) -> None:
    metrics.settled()
    before = metrics.totals(REQUESTS, ("status_code",), model="tight")
    calls = [lambda: tight.post(COMPLETIONS, {"prompt": "Return", "max_tokens": 60, "temperature": 0})] * 30
    replies = tight.concurrently(calls, concurrency=30)
    statuses = Counter(r.status for r in replies)
    assert set(statuses) == {200, 503}, statuses
    for reply in replies:
        if reply.status == 503:
            assert reply.json()["error"]["code"] == "queue_full"
            assert reply.headers["retry-after"] == "1"
    expected = Counter({(str(s),): n for s, n in statuses.items()})
    assert metrics.wait_for_delta(before, expected, REQUESTS, ("status_code",), model="tight") == expected
    # Once the burst is over the server serves again.
    assert tight.post(COMPLETIONS, {"prompt": "Return", "max_tokens": 2}).status == 200


def test_int8_classifier(classifier, tiny_classifier: TinyModel) -> None:
    (model,) = classifier.get("/v1/models").json()["data"]
    assert (model["task"], model["quantization"], model["version"]) == ("classification", "int8", "c1")
    assert model["labels"] == ["other", "returns"]
    inputs = ["Return the absolute value of x.", "A class for reading files.", "Returns a list of names."]
    local = ModelRunner.load(str(tiny_classifier.path), "c1", quantization="int8")
    probabilities = local.classify([local.encode(text, special_tokens=True) for text in inputs])
    expected = [local.to_classification(i, p) for i, p in enumerate(probabilities)]
    reply = classifier.post("/v1/classify", {"input": inputs})
    assert reply.status == 200 and reply.headers["x-kubeforge-model-version"] == "c1"
    data = reply.json()["data"]
    assert [d["label"] for d in data] == [e.label for e in expected]
    for d, e in zip(data, expected, strict=True):
        assert d["score"] == pytest.approx(e.score, abs=1e-3)
        assert sum(d["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    too_long = "word " * 200
    assert classifier.post("/v1/classify", {"input": too_long}).status == 413
    assert classifier.post("/v1/classify", {"input": too_long, "truncate": True}).status == 200
    wrong = classifier.post(COMPLETIONS, {"prompt": "x"})
    assert (wrong.status, wrong.json()["error"]["code"]) == (400, "wrong_task")


def test_a_ray_without_direct_ingress_refuses_an_ingress_direct_deployment(
    local_ray, tiny_lm: TinyModel, deployment_resource
) -> None:
    resource = deployment_resource("refused", modelUri=str(tiny_lm.path), ingress="direct")
    args = {"resource": resource, "modelVersion": "v1"}
    with pytest.raises(ValueError, match=r"ModelDeployment refused: spec.ingress: direct needs a Ray started with"):
        serve_locally(args, http_port=local_ray.http_port, route_prefix="/refused")
