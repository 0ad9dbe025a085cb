"""The chat playground's pure parts: chat messages from Gradio's history, the streamed answer text, the page's key
check, the spec's rules (validate) and the URL `kubeforge run` prints. The page itself is tested in a browser
(tests/integration/serve/test_serve_playground.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubeforge.local.serving import playground_url
from kubeforge.validate import validate_document
from kubeforge_trainer.serve.playground import (
    PlaygroundError,
    chat_body,
    chat_messages,
    is_playground_path,
    key_matches,
    stream_text,
)
from kubeforge_trainer.serve.protocol import ApiError, sse_event
from starlette.responses import JSONResponse, StreamingResponse


def test_chat_messages_flatten_gradio_history_into_openai_messages() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
        {"role": "user", "content": {"path": "/tmp/cat.png"}},  # a file: the chat API takes text only
        {"role": "tool", "content": "ignored"},
    ]
    assert chat_messages("and now?", history, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    assert chat_messages("x", [], "  ") == [{"role": "user", "content": "x"}]


def test_chat_body_is_a_streamed_chat_request_with_the_sliders() -> None:
    body = chat_body("m", [{"role": "user", "content": "x"}], 0.7, 0.9, 31.0)
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 31,
    }


def chunk(content: str | None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": content}
    return sse_event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


def collect(response: Any) -> list[str]:
    async def run() -> list[str]:
        return [text async for text in stream_text(response)]

    return asyncio.run(run())


def test_stream_text_grows_with_each_delta_and_closes_the_stream() -> None:
    closed = []

    async def events() -> AsyncIterator[bytes]:
        try:
            for event in (chunk(None, role=True), chunk("Hel"), chunk("lo"), chunk(""), sse_event("[DONE]")):
                yield event
        finally:
            closed.append(True)

    assert collect(StreamingResponse(events())) == ["Hel", "Hello"]
    assert closed == [True]


def test_a_page_that_stops_reading_closes_the_apps_stream() -> None:
    """Gradio closes the answer's generator when the user stops it or leaves: the app's stream must close too (its
    cleanup cancels the sequence in the running batch)."""
    closed = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield chunk("x")
        finally:
            closed.append(True)

    async def read_two() -> tuple[list[str], list[bool]]:
        texts = stream_text(StreamingResponse(endless()))
        got = [await anext(texts), await anext(texts)]
        await texts.aclose()
        return got, list(closed)  # closed at once, not when the loop finalises leftover generators

    assert asyncio.run(read_two()) == (["x", "xx"], [True])


def test_stream_text_raises_the_apis_error_message() -> None:
    refused = JSONResponse(ApiError(400, "max_tokens is over the limit of 8", param="max_tokens").body(), 400)
    with pytest.raises(PlaygroundError, match="max_tokens is over the limit of 8"):
        collect(refused)

    async def failing() -> AsyncIterator[bytes]:
        yield chunk("a")
        yield sse_event(ApiError(500, "the server failed on this request").body())

    with pytest.raises(PlaygroundError, match="the server failed"):
        collect(StreamingResponse(failing()))


def test_playground_paths_and_keys() -> None:
    assert is_playground_path("/playground") and is_playground_path("/playground/gradio_api/queue/join")
    assert not is_playground_path("/playgrounds") and not is_playground_path("/v1/models")
    assert key_matches("k2", [b"k1", b"k2"]) and not key_matches("k", [b"k1"]) and not key_matches("", [b"k1"])
    assert playground_url("http://127.0.0.1:8000/chat") == "http://127.0.0.1:8000/chat/playground/"


def problems(**spec: Any) -> list[str]:
    doc = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ml"},
        "spec": {"modelUri": "s3://models/chat", **spec},
    }
    return [str(p) for p in validate_document("md.yaml", doc)[1]]


def test_playground_rules_are_one_line_problems() -> None:
    assert problems(playground=True) == []
    (problem,) = problems(playground=True, replicas={"min": 1, "max": 3})
    assert "spec.playground needs spec.replicas.max 1" in problem and "\n" not in problem
    (problem,) = problems(playground=True, engine="vllm", resources={"gpu": 1})
    assert "spec.playground needs engine transformers" in problem
    assert problems(replicas={"min": 1, "max": 3}) == []
