"""Request validation, error bodies, response shapes and SSE framing of the inference API (pure)."""

from __future__ import annotations

import json

import pytest
from kubeforge_trainer.serve.protocol import (
    MAX_PROMPTS,
    ApiError,
    ChatRequest,
    Choice,
    Classification,
    ClassifyRequest,
    ClassifyResult,
    CompletionRequest,
    CompletionResult,
    StreamDelta,
    chat_body,
    chat_chunk,
    classify_body,
    completion_body,
    completion_chunk,
    merge_deltas,
    parse_chat_request,
    parse_classify_request,
    parse_completion_request,
    parse_json_body,
    sse_event,
)


def test_valid_completion_request_keeps_every_field() -> None:
    body = {
        "model": "m",
        "prompt": "hello",
        "max_tokens": 5,
        "temperature": 0,
        "top_p": 0.9,
        "stop": "\n",
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 7,
        "user": "u",
    }
    request = parse_completion_request(body)
    assert request == CompletionRequest(
        prompts=("hello",),
        model="m",
        max_tokens=5,
        temperature=0.0,
        top_p=0.9,
        stop=("\n",),
        stream=True,
        include_usage=True,
        seed=7,
    )


def test_omitted_and_null_fields_mean_defaults() -> None:
    request = parse_completion_request({"prompt": ["a", "b"], "max_tokens": None, "stop": None})
    assert request == CompletionRequest(prompts=("a", "b"), prompt_is_list=True)


BAD_COMPLETIONS = [
    ([1, 2], "invalid_json", None),
    ("text", "invalid_json", None),
    ({}, "missing_field", "prompt"),
    ({"prompt": None}, "missing_field", "prompt"),
    ({"prompt": 5}, "invalid_value", "prompt"),
    ({"prompt": ""}, "invalid_value", "prompt"),
    ({"prompt": []}, "invalid_value", "prompt"),
    ({"prompt": ["a", 3]}, "invalid_value", "prompt"),
    ({"prompt": ["a", ""]}, "invalid_value", "prompt"),
    ({"prompt": ["a"] * (MAX_PROMPTS + 1)}, "invalid_value", "prompt"),
    ({"prompt": "a", "max_tokens": 0}, "invalid_value", "max_tokens"),
    ({"prompt": "a", "max_tokens": "5"}, "invalid_value", "max_tokens"),
    ({"prompt": "a", "max_tokens": True}, "invalid_value", "max_tokens"),
    ({"prompt": "a", "max_tokens": 2.5}, "invalid_value", "max_tokens"),
    ({"prompt": "a", "max_tokens": 10**9}, "invalid_value", "max_tokens"),
    ({"prompt": "a", "temperature": -0.1}, "invalid_value", "temperature"),
    ({"prompt": "a", "temperature": 10.5}, "invalid_value", "temperature"),
    ({"prompt": "a", "temperature": "hot"}, "invalid_value", "temperature"),
    ({"prompt": "a", "temperature": float("inf")}, "invalid_value", "temperature"),
    ({"prompt": "a", "top_p": 0}, "invalid_value", "top_p"),
    ({"prompt": "a", "top_p": 1.01}, "invalid_value", "top_p"),
    ({"prompt": "a", "stop": 3}, "invalid_value", "stop"),
    ({"prompt": "a", "stop": ["x", 1]}, "invalid_value", "stop"),
    ({"prompt": "a", "stop": [""]}, "invalid_value", "stop"),
    ({"prompt": "a", "stop": ["s"] * 17}, "invalid_value", "stop"),
    ({"prompt": "a", "stop": "x" * 257}, "invalid_value", "stop"),
    ({"prompt": "a", "stream": "yes"}, "invalid_value", "stream"),
    ({"prompt": "a", "stream_options": {"include_usage": True}}, "invalid_value", "stream_options"),
    ({"prompt": "a", "stream": True, "stream_options": {"other": 1}}, "invalid_value", "stream_options"),
    ({"prompt": "a", "stream": True, "stream_options": {"include_usage": 1}}, "invalid_value", "include_usage"),
    ({"prompt": "a", "seed": -1}, "invalid_value", "seed"),
    ({"prompt": "a", "model": 3}, "invalid_value", "model"),
    ({"prompt": "a", "n": 2}, "unknown_field", "n"),
    ({"prompt": "a", "logprobs": 1, "echo": True}, "unknown_field", "echo"),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD_COMPLETIONS)
def test_bad_completion_requests_are_400_naming_the_field(body: object, code: str, param: str | None) -> None:
    error = parse_completion_request(body)
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.param) == (400, code, param)
    assert error.type == "invalid_request_error"
    assert error.message


def test_valid_classify_request() -> None:
    request = parse_classify_request({"input": ["x", "y"], "truncate": True, "model": "m"})
    assert request == ClassifyRequest(inputs=("x", "y"), input_is_list=True, model="m", truncate=True)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 1}, "input"),
        ({"input": [""]}, "input"),
        ({"input": "x", "truncate": "no"}, "truncate"),
        ({"input": "x", "prompt": "y"}, "prompt"),
    ],
)
def test_bad_classify_requests_are_400(body: dict, param: str) -> None:
    error = parse_classify_request(body)
    assert isinstance(error, ApiError)
    assert (error.status, error.param) == (400, param)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"   ", 400, "invalid_json"),
        (b"{bad", 400, "invalid_json"),
        (b'{"prompt": "a",}', 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        (b'{"temperature": NaN}', 400, "invalid_json"),
        (b'{"temperature": Infinity}', 400, "invalid_json"),
        (b"[" * 100_000, 400, "invalid_json"),
        (b"x" * 2048, 413, "body_too_large"),
    ],
)
def test_unparseable_bodies(raw: bytes, status: int, code: str) -> None:
    error = parse_json_body(raw, max_bytes=1024 if status == 413 else 1 << 20)
    assert isinstance(error, ApiError)
    assert (error.status, error.code) == (status, code)


def test_json_body_decodes() -> None:
    assert parse_json_body('{"prompt": "é"}'.encode()) == {"prompt": "é"}


def test_error_body_is_openai_shaped() -> None:
    body = ApiError(400, "bad", code="invalid_value", param="top_p").body()
    assert body == {
        "error": {"message": "bad", "type": "invalid_request_error", "code": "invalid_value", "param": "top_p"}
    }


def test_completion_body_and_usage() -> None:
    result = CompletionResult(choices=(Choice(0, "hi", "length"),), prompt_tokens=3, completion_tokens=2)
    body = completion_body("cmpl-1", 10, "m", "v1", result)
    assert body["choices"] == [{"index": 0, "text": "hi", "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert (body["object"], body["model"], body["version"]) == ("text_completion", "m", "v1")


def test_classify_body() -> None:
    result = ClassifyResult((Classification(0, "pos", 0.75, {"neg": 0.25, "pos": 0.75}),), prompt_tokens=4)
    body = classify_body("m", "v2", result)
    assert body["data"][0] == {
        "object": "classification",
        "index": 0,
        "label": "pos",
        "score": 0.75,
        "scores": {"neg": 0.25, "pos": 0.75},
    }
    assert body["version"] == "v2"


def test_sse_event_framing() -> None:
    assert sse_event("[DONE]") == b"data: [DONE]\n\n"
    event = sse_event(completion_chunk("c", 1, "m", "v", [StreamDelta(0, "a\nb")], {"prompt_tokens": 1}))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert b"\n" not in event[:-2]  # newlines inside text are JSON-escaped, so the event stays one line
    assert json.loads(event[6:])["choices"] == [{"index": 0, "text": "a\nb", "finish_reason": None}]


def test_merge_deltas_joins_per_choice_in_order() -> None:
    merged = merge_deltas([StreamDelta(0, "a"), StreamDelta(1, "x"), StreamDelta(0, "b", "stop"), StreamDelta(1, "y")])
    assert merged == [StreamDelta(0, "ab", "stop"), StreamDelta(1, "xy")]


def test_valid_chat_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ],
        "max_completion_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "x",
        "seed": 3,
        "n": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = parse_chat_request(body)
    assert isinstance(request, ChatRequest)
    assert request.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"})
    assert (request.max_tokens, request.temperature, request.top_p, request.stop, request.seed) == (
        7,
        0.5,
        0.9,
        ("x",),
        3,
    )
    assert request.stream and request.include_usage
    assert parse_chat_request({"messages": [{"role": "user", "content": "a"}], "max_tokens": 4}).max_tokens == 4


USER = [{"role": "user", "content": "a"}]
BAD_CHATS = [
    ({}, "missing_field", "messages"),
    ({"messages": []}, "invalid_value", "messages"),
    ({"messages": ["hi"]}, "invalid_value", "messages"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "invalid_value", "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "invalid_value", "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "invalid_value", "messages"),
    ({"messages": [{"role": "user", "content": "a", "tool_calls": []}]}, "invalid_value", "messages"),
    ({"messages": USER, "n": 2}, "unsupported_value", "n"),
    ({"messages": USER, "max_tokens": 3, "max_completion_tokens": 4}, "invalid_value", "max_tokens"),
    ({"messages": USER, "logprobs": True}, "unknown_field", "logprobs"),
    ({"messages": USER, "tools": []}, "unknown_field", "tools"),
    ({"messages": USER, "temperature": 11}, "invalid_value", "temperature"),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD_CHATS)
def test_bad_chat_requests_are_400_naming_the_field(body: object, code: str, param: str) -> None:
    error = parse_chat_request(body)
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.param) == (400, code, param)


def test_chat_chunks_and_body_are_openai_shaped() -> None:
    first = chat_chunk("id", 1, "m", "v1", [StreamDelta(0, "")], first=True)
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = chat_chunk("id", 1, "m", "v1", [StreamDelta(0, "", "stop")])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    body = chat_body("id", 1, "m", "v1", CompletionResult((Choice(0, "hi", "length"),), 3, 1))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
