"""The official `openai` client against the inference app on a real local Ray Serve: chat completions (whole and
streamed), completions, /v1/models and errors, served by the transformers engine from a Hugging Face directory
(a tiny random-weight Llama with a chat template, built here; nothing is downloaded)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from kubeforge.api import ModelDeployment
from kubeforge.builders.rayservice import ResolvedAdapter, ResolvedModel, build_serve_config
from kubeforge.config import OperatorConfig
from kubeforge_trainer.serve import serve_locally
from kubeforge_trainer.serve.runner import ModelRunner
from support.tiny_models import build_tiny_lora_adapter as make_adapter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "chat"
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Return the value of the path"},
]


@pytest.fixture(scope="module")
def client(local_ray, chat_dir: Path, deployment_resource) -> openai.OpenAI:
    """The official client pointed at the app's /v1."""
    resource = deployment_resource(
        NAME,
        modelUri=str(chat_dir),
        resources={"cpu": "500m", "memory": "512Mi"},
        batching={"enabled": True, "maxBatchSize": 8, "maxWaitMs": 0},
        generation={"maxTokens": 12},
    )
    url = serve_locally({"resource": resource, "modelVersion": "v1"}, http_port=local_ray.http_port, route_prefix="/c")
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(chat_dir: Path) -> ModelRunner:
    """The same directory loaded in this process."""
    return ModelRunner.load(str(chat_dir), "v1")


def transformers_greedy(runner: ModelRunner, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[str, int]:
    """(text, prompt tokens) of transformers' own generate on the chat template: the reference the server must meet."""
    ids = runner.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = runner.encode(ids, special_tokens=False)
    out = runner.model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, len(prompt) :].tolist()
    eos = runner.loaded.eos_token_ids
    if any(t in eos for t in new):
        new = new[: next(i for i, t in enumerate(new) if t in eos)]
    return runner.decode(new), len(prompt)


def test_chat_completion_equals_transformers_generate(client: openai.OpenAI, local: ModelRunner) -> None:
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0)
    expected, prompt_tokens = transformers_greedy(local, MESSAGES, 10)
    assert reply.object == "chat.completion" and reply.model == NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.usage.completion_tokens <= 10


def test_streamed_chat_sends_the_same_text_in_openai_chunks(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=NAME, messages=MESSAGES, max_completion_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        max_completion_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(texts) == whole.choices[0].message.content
    assert sum(1 for t in texts if t) >= 2  # tokens arrived in several chunks, not one
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_seeded_sampling_reproduces(client: openai.OpenAI) -> None:
    def sampled(seed: int) -> str:
        reply = client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_tokens=10, temperature=1.0, top_p=0.9, seed=seed
        )
        return reply.choices[0].message.content

    assert sampled(7) == sampled(7)
    assert len({sampled(s) for s in (1, 2, 3)}) > 1


def test_stop_string_ends_the_chat_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    text = whole.choices[0].message.content
    stop = text[3:5]
    assert stop  # random weights still produce several characters
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_concurrent_chats_each_get_their_own_answer(client: openai.OpenAI, local: ModelRunner) -> None:
    conversations = [[{"role": "user", "content": f"Open the file number {i}"}] for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(
            pool.map(
                lambda m: client.chat.completions.create(model=NAME, messages=m, max_tokens=8, temperature=0),
                conversations,
            )
        )
    for messages, reply in zip(conversations, replies, strict=True):
        assert reply.choices[0].message.content == transformers_greedy(local, messages, 8)[0]


def test_completions_and_models_stay(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=NAME, prompt="Return the", max_tokens=5, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 5
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    raw = models.data[0].model_dump()
    assert not any("uri" in key.lower() for key in raw)  # storage locations are not revealed


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"temperature": -1}, "temperature"),
    ],
)
def test_unsupported_or_bad_fields_are_400_naming_the_field(client: openai.OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4, **extra)
    assert caught.value.status_code == 400
    assert caught.value.param == param and param in caught.value.message


def test_unknown_model_is_404_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert caught.value.code == "model_not_found" and "no-such-model" in caught.value.message


# ---- LoRA adapters: loaded into the running replicas (Serve reconfigure), no restart -------------------------


def peft_greedy(chat_dir: Path, adapter: Path, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """transformers generate through peft with the adapter: the reference for the adapter's answers."""
    from peft import PeftModel

    runner = ModelRunner.load(str(chat_dir), "ref")
    runner.loaded.model = PeftModel.from_pretrained(runner.loaded.model, str(adapter)).eval()
    return transformers_greedy(runner, messages, max_new_tokens)[0]


LORA = "lora"


def replica_actors() -> set[str]:
    """Names of the LoRA app's live Serve replica actors (a restarted replica gets a new one)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {n for n in names if n.startswith(f"SERVE_REPLICA::{LORA}#")}


def deploy_as_kuberay(
    chat_dir: Path,
    deployment_resource,
    adapters: list[ResolvedAdapter],
    name: str = LORA,
    env: dict[str, str] | None = None,
    **spec: object,
) -> None:
    """Apply the operator's serveConfigV2 application to Serve's controller, as KubeRay does on every change (the
    only declaratively deployed app: applying it removes any other). env stands in for the pods' Secret env."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    resource = deployment_resource(
        name,
        modelUri=str(chat_dir),
        resources={"cpu": "500m", "memory": "512Mi"},
        generation={"maxTokens": 12},
        adapters=[{"name": a.name, "uri": a.uri} for a in adapters],
        **spec,
    )
    typed = ModelDeployment.model_validate(resource)
    config = build_serve_config(typed, OperatorConfig(), ResolvedModel(str(chat_dir), "v1"), adapters=adapters)
    app = {**config["applications"][0], "route_prefix": f"/{name}"}
    app["runtime_env"]["env_vars"].update(env or {})
    _get_global_client().deploy_apps(ServeDeploySchema(applications=[app]), _blocking=True)


def test_adapters_load_into_the_running_replicas_and_are_chosen_by_model(
    client: openai.OpenAI, local_ray, chat_dir: Path, deployment_resource, tmp_path_factory
) -> None:
    import requests

    tmp = tmp_path_factory.mktemp("adapters")
    fr, de = make_adapter(chat_dir, tmp / "fr", 1), make_adapter(chat_dir, tmp / "de", 2)
    url = f"http://127.0.0.1:{local_ray.http_port}/{LORA}"
    lora = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    deploy_as_kuberay(chat_dir, deployment_resource, [])
    before = replica_actors()
    assert len(before) == 1
    base = lora.chat.completions.create(model=LORA, messages=MESSAGES, max_tokens=10, temperature=0)

    deploy_as_kuberay(chat_dir, deployment_resource, [ResolvedAdapter("fr", str(fr), "3")])
    assert replica_actors() == before  # the base model stayed loaded: same replica
    assert requests.get(url + "/ready", timeout=30).json()["adapters"] == [{"name": "fr", "version": "3"}]
    tuned = lora.chat.completions.create(model="fr", messages=MESSAGES, max_tokens=10, temperature=0)
    assert tuned.choices[0].message.content == peft_greedy(chat_dir, fr, MESSAGES, 10)
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert (tuned.model, base.model) == ("fr", LORA)  # the answer names the model the request picked
    assert [m.id for m in lora.models.list().data] == [LORA, "fr"]

    # A second adapter joins while the first keeps serving (streamed: adapters stream too).
    adapters = [ResolvedAdapter("fr", str(fr), "3"), ResolvedAdapter("de", str(de), "1")]
    deploy_as_kuberay(chat_dir, deployment_resource, adapters)
    assert replica_actors() == before
    stream = lora.chat.completions.create(model="de", messages=MESSAGES, max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert {c.model for c in chunks} == {"de"}
    assert streamed == peft_greedy(chat_dir, de, MESSAGES, 10)
    again = lora.chat.completions.create(model="fr", messages=MESSAGES, max_tokens=10, temperature=0)
    assert again.choices[0].message.content == tuned.choices[0].message.content

    # Removing them all serves the base as before.
    deploy_as_kuberay(chat_dir, deployment_resource, [])
    with pytest.raises(openai.NotFoundError):
        lora.chat.completions.create(model="fr", messages=MESSAGES, max_tokens=4)
    plain = lora.chat.completions.create(model=LORA, messages=MESSAGES, max_tokens=10, temperature=0)
    assert plain.choices[0].message.content == base.choices[0].message.content
    assert replica_actors() == before


# ---- Hardening: API keys, per-request limits, oversized bodies ---------------------------------------------------

SECURED = "secured"
KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def secured(local_ray, chat_dir: Path, deployment_resource) -> str:
    """An app with API keys (as the pods get them from the Secret) and per-request limits; its base URL."""
    deploy_as_kuberay(
        chat_dir,
        deployment_resource,
        [],
        name=SECURED,
        env={"KUBEFORGE_API_KEYS": "\n".join(KEYS) + "\n"},
        auth={"apiKeySecret": "serving-keys"},
        limits={"maxPromptTokens": 60, "maxTokens": 6},
    )
    return f"http://127.0.0.1:{local_ray.http_port}/{SECURED}"


def test_api_keys_are_required_and_checked(secured: str) -> None:
    import requests

    wrong = openai.OpenAI(base_url=secured + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=SECURED, messages=MESSAGES, max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    body = {"model": SECURED, "messages": MESSAGES, "max_tokens": 2}
    anonymous = requests.post(secured + "/v1/chat/completions", json=body, timeout=30)  # no Authorization at all
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(secured + "/v1/models", timeout=30).status_code == 401
    assert requests.get(secured + "/health", timeout=30).status_code == 200  # probes need no key
    for key in KEYS:
        client = openai.OpenAI(base_url=secured + "/v1", api_key=key, max_retries=0)
        assert client.chat.completions.create(model=SECURED, messages=MESSAGES, max_tokens=2).choices


def test_limits_are_400s_that_name_the_limit(secured: str) -> None:
    client = openai.OpenAI(base_url=secured + "/v1", api_key=KEYS[0], max_retries=0)
    long = [{"role": "user", "content": "Return the value of the path " * 10}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SECURED, messages=long, max_tokens=2)
    assert caught.value.param == "messages" and "spec.limits.maxPromptTokens" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SECURED, messages=MESSAGES, max_tokens=7)
    assert caught.value.param == "max_tokens" and "spec.limits.maxTokens" in caught.value.message
    # Without max_tokens the deployment's default (12) is cut to the limit.
    reply = client.chat.completions.create(model=SECURED, messages=MESSAGES, temperature=0)
    assert reply.usage.completion_tokens <= 6


def test_an_oversized_body_is_refused_from_its_content_length_before_it_is_sent(secured: str) -> None:
    import http.client
    import json
    from urllib.parse import urlparse

    url = urlparse(secured)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.putrequest("POST", url.path + "/v1/chat/completions")
    connection.putheader("Authorization", f"Bearer {KEYS[0]}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(1 << 30))  # 1 GiB announced; only the headers are ever sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "body_too_large"
    connection.close()


def test_engine_metrics_are_exported_per_adapter(client: openai.OpenAI, metrics) -> None:
    from collections import Counter

    tokens = "ray_kubeforge_inference_tokens_generated_total"
    before = metrics.totals(tokens, ("adapter",), model=NAME)
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=5, temperature=0)
    expected = Counter({("",): reply.usage.completion_tokens})  # the base model's adapter label is empty
    assert metrics.wait_for_delta(before, expected, tokens, ("adapter",), model=NAME) == expected
    names = {name for name, labels, _ in metrics.scrape() if labels.get("model") == NAME}
    engine = {"num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"}
    assert {f"ray_kubeforge_inference_{n}" for n in engine} <= names
