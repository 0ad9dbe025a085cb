"""Talking to a served ModelDeployment: the sample request, its answer, and the curl commands printed for users.

Pure builders (URLs, bodies, commands, answer parsing) plus one small HTTP helper on the standard library.
"""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..constants import SERVE_PLAYGROUND_PATH

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
CLASSIFY = "/v1/classify"
MODELS = "/v1/models"


@dataclass(frozen=True)
class SampleRequest:
    """One request to the endpoint: path and JSON body."""

    path: str
    body: dict[str, Any]


def sample_request(task: str, prompt: str, max_tokens: int | None = None, chat: bool = False) -> SampleRequest:
    """The request that shows a model off: a chat turn for a model with a chat template, a completion for another
    language model, a classification otherwise."""
    if task == "classification":
        return SampleRequest(CLASSIFY, {"input": prompt})
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return SampleRequest(CHAT_COMPLETIONS if chat else COMPLETIONS, body)


def answer_text(task: str, response: dict[str, Any]) -> str:
    """The generated text (or the predicted label) in an endpoint's JSON answer."""
    if task == "classification":
        first = response["data"][0]
        return f"{first['label']} (score {first['score']:.2f})"
    choice = response["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def served_model(models: dict[str, Any]) -> tuple[str, bool]:
    """(task, has a chat template) of the base model in a /v1/models answer."""
    base = next(m for m in models["data"] if "parent" not in m)
    return base.get("task", "languageModeling"), bool(base.get("chatTemplate"))


def curl_commands(url: str, task: str, prompt: str, metrics_url: str | None, chat: bool = False) -> list[str]:
    """Copy-paste commands against the endpoint (and the Prometheus metrics)."""
    request = sample_request(task, prompt, 32 if task != "classification" else None, chat=chat)
    body = json.dumps(request.body)
    commands = [
        f"curl -s {url}{request.path} -H 'Content-Type: application/json' -d {shlex.quote(body)}",
    ]
    if task != "classification":
        stream = json.dumps({**request.body, "stream": True})
        commands.append(f"curl -sN {url}{request.path} -H 'Content-Type: application/json' -d {shlex.quote(stream)}")
    commands.append(f"curl -s {url}{MODELS}")
    if metrics_url:
        commands.append(f"curl -s {metrics_url} | grep kubeforge_inference_")
    return commands


def playground_url(url: str) -> str:
    """The chat page of an endpoint whose ModelDeployment sets spec.playground."""
    return f"{url}{SERVE_PLAYGROUND_PATH}/"


def post_json(url: str, body: dict[str, Any] | None, timeout: float = 120.0) -> dict[str, Any]:
    """POST a JSON body (GET when body is None) and return the JSON answer; raises RuntimeError with the server's
    error message."""
    data = json.dumps(body).encode() if body is not None else None
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise RuntimeError(f"{method} {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise RuntimeError(f"{method} {url} failed: {getattr(exc, 'reason', exc)}") from None
