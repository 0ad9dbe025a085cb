"""The HTTP API's wire format: request validation into typed requests or 4xx errors, response bodies, SSE framing.

Everything here is pure (no Ray, no HTTP server), so every rule is unit-tested on its own. The shapes follow the
OpenAI completions API where it has one (``choices``, ``usage``, ``data: [DONE]``, ``{"error": {...}}``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from kubeforge.wording import plural

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than any context window holds
MAX_PROMPTS = 64  # prompts (or classify inputs) in one request
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_TOKENS_LIMIT = 65536
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**63 - 1

COMPLETION_FIELDS = frozenset(
    {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options", "seed", "user"}
)
CLASSIFY_FIELDS = frozenset({"model", "input", "truncate", "user"})
CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "seed",
        "n",
        "user",
    }
)
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant"})
MAX_MESSAGES = 256


@dataclass(frozen=True)
class ApiError:
    """An error answered to the client: HTTP status plus an OpenAI-style error object."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "code", "param"}}."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


@dataclass(frozen=True)
class CompletionRequest:
    """A validated /v1/completions request; None means "use the deployment's default"."""

    prompts: tuple[str, ...]
    prompt_is_list: bool = False
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A validated /v1/chat/completions request (n is always 1); None means "use the deployment's default"."""

    messages: tuple[dict[str, str], ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class ClassifyRequest:
    """A validated /v1/classify request."""

    inputs: tuple[str, ...]
    input_is_list: bool = False
    model: str | None = None
    truncate: bool = False


@dataclass(frozen=True)
class Choice:
    """One generated completion."""

    index: int
    text: str
    finish_reason: str


@dataclass(frozen=True)
class CompletionResult:
    """What the model server returns for a non-streaming completion."""

    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Classification:
    """Class probabilities of one input."""

    index: int
    label: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassifyResult:
    """What the model server returns for /v1/classify."""

    classifications: tuple[Classification, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class StreamStart:
    """First event of a completion stream: the request passed the model's checks."""

    prompt_tokens: int


@dataclass(frozen=True)
class StreamDelta:
    """New text for one choice; finish_reason is set on the choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class StreamEnd:
    """Last event of a completion stream."""

    prompt_tokens: int
    completion_tokens: int


class _Invalid(Exception):
    """Carries an ApiError out of the field checkers."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _bad(message: str, param: str | None = None, code: str = "invalid_value", status: int = 400) -> _Invalid:
    return _Invalid(ApiError(status, message, code=code, param=param))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, max_bytes: int = MAX_BODY_BYTES) -> Any | ApiError:
    """Decode a request body as strict JSON (UTF-8, no NaN/Infinity); an ApiError when it is not."""
    if len(raw) > max_bytes:
        return ApiError(413, f"request body is {len(raw)} bytes; the limit is {max_bytes}", code="body_too_large")
    if not raw.strip():
        return ApiError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        return ApiError(400, "request body is not valid UTF-8", code="invalid_json")
    except json.JSONDecodeError as exc:
        return ApiError(400, f"request body is not valid JSON: {exc.msg} at position {exc.pos}", code="invalid_json")
    except (ValueError, RecursionError) as exc:
        return ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json")


def _require_object(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, not {_json_type(body)}", code="invalid_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
            param=unknown[0],
            code="unknown_field",
        )
    return body


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _texts(body: dict[str, Any], name: str) -> tuple[tuple[str, ...], bool]:
    """A required string or non-empty array of strings; returns (texts, was_array)."""
    value = body.get(name)
    if value is None:
        raise _bad(f"'{name}' is required", param=name, code="missing_field")
    if isinstance(value, str):
        texts, is_list = (value,), False
    elif isinstance(value, list):
        if not value:
            raise _bad(f"'{name}' must not be an empty array", param=name)
        if len(value) > MAX_PROMPTS:
            raise _bad(f"'{name}' has {len(value)} entries; at most {MAX_PROMPTS} are allowed", param=name)
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            raise _bad(f"'{name}[{bad[0]}]' must be a string, not {_json_type(value[bad[0]])}", param=name)
        texts, is_list = tuple(value), True
    else:
        raise _bad(f"'{name}' must be a string or an array of strings, not {_json_type(value)}", param=name)
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        where = f"'{name}[{empty[0]}]'" if is_list else f"'{name}'"
        raise _bad(f"{where} must not be empty", param=name)
    return texts, is_list


def _optional_int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, not {_json_type(value)}", param=name)
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def _optional_number(
    body: dict[str, Any], name: str, low: float, high: float, low_inclusive: bool = True
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a finite number, not {_json_type(value)}", param=name)
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        bracket = "[" if low_inclusive else "("
        raise _bad(f"'{name}' must be in {bracket}{low}, {high}], got {value}", param=name)
    return float(value)


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, not {_json_type(value)}", param=name)
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"'{name}' must be a string, not {_json_type(value)}", param=name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...] | None:
    value = body.get("stop")
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or any(not isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or an array of strings", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad(f"'stop' has {len(stops)} entries; at most {MAX_STOP_STRINGS} are allowed", param="stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad(f"every stop string must have 1 to {MAX_STOP_CHARS} characters", param="stop")
    return tuple(stops)


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _bad("'stream_options' is only allowed with \"stream\": true", param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise _bad("'stream_options' must be an object with only 'include_usage'", param="stream_options")
    return bool(_optional_bool(options, "include_usage"))


def _generation_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields /v1/completions and /v1/chat/completions share (model, sampling, stop, streaming, seed)."""
    stream = bool(_optional_bool(obj, "stream"))
    _optional_str(obj, "user")
    return {
        "model": _optional_str(obj, "model"),
        "temperature": _optional_number(obj, "temperature", 0.0, MAX_TEMPERATURE),
        "top_p": _optional_number(obj, "top_p", 0.0, 1.0, low_inclusive=False),
        "stop": _stop(obj),
        "stream": stream,
        "include_usage": _include_usage(obj, stream),
        "seed": _optional_int(obj, "seed", 0, MAX_SEED),
    }


def parse_completion_request(body: Any) -> CompletionRequest | ApiError:
    """Validate a decoded /v1/completions body into a CompletionRequest, or a 400 ApiError naming the field."""
    try:
        obj = _require_object(body, COMPLETION_FIELDS)
        prompts, is_list = _texts(obj, "prompt")
        max_tokens = _optional_int(obj, "max_tokens", 1, MAX_TOKENS_LIMIT)
        return CompletionRequest(
            prompts=prompts, prompt_is_list=is_list, max_tokens=max_tokens, **_generation_fields(obj)
        )
    except _Invalid as exc:
        return exc.error


def _message_content(message: dict[str, Any], where: str) -> str:
    """A message's text: a string, or an array of {"type": "text", "text": ...} parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f'\'{where}.content[{i}]\' must be a text part {{"type": "text", "text": ...}}', "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"'{where}.content' must be a string or an array of text parts, not {_json_type(content)}", "messages")


def _messages(body: dict[str, Any]) -> tuple[dict[str, str], ...]:
    value = body.get("messages")
    if value is None:
        raise _bad("'messages' is required", param="messages", code="missing_field")
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty array of messages", param="messages")
    if len(value) > MAX_MESSAGES:
        raise _bad(f"'messages' has {len(value)} entries; at most {MAX_MESSAGES} are allowed", param="messages")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{where}' must be an object with 'role' and 'content'", param="messages")
        unknown = sorted(set(message) - {"role", "content", "name"})
        if unknown:
            raise _bad(f"'{where}' has unsupported field(s) {', '.join(unknown)}", param="messages")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise _bad(f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}, not {role!r}", "messages")
        messages.append({"role": str(role), "content": _message_content(message, where)})
    return tuple(messages)


def parse_chat_request(body: Any) -> ChatRequest | ApiError:
    """Validate a decoded /v1/chat/completions body into a ChatRequest, or a 400 ApiError naming the field."""
    try:
        obj = _require_object(body, CHAT_FIELDS)
        messages = _messages(obj)
        n = _optional_int(obj, "n", 1, MAX_PROMPTS)
        if n not in (None, 1):
            raise _bad(f"'n' must be 1 (one choice per request), got {n}", param="n", code="unsupported_value")
        max_tokens = _optional_int(obj, "max_tokens", 1, MAX_TOKENS_LIMIT)
        max_completion = _optional_int(obj, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
        if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
            raise _bad("set one of 'max_tokens' or 'max_completion_tokens', not both", param="max_tokens")
        max_tokens = max_completion if max_completion is not None else max_tokens
        return ChatRequest(messages=messages, max_tokens=max_tokens, **_generation_fields(obj))
    except _Invalid as exc:
        return exc.error


def parse_classify_request(body: Any) -> ClassifyRequest | ApiError:
    """Validate a decoded /v1/classify body into a ClassifyRequest, or a 400 ApiError naming the field."""
    try:
        obj = _require_object(body, CLASSIFY_FIELDS)
        inputs, is_list = _texts(obj, "input")
        _optional_str(obj, "user")
        return ClassifyRequest(
            inputs=inputs,
            input_is_list=is_list,
            model=_optional_str(obj, "model"),
            truncate=bool(_optional_bool(obj, "truncate")),
        )
    except _Invalid as exc:
        return exc.error


def context_error(prompt_tokens: int, context_length: int, index: int | None, param: str) -> ApiError:
    """413: an input leaves no room in the model's context window."""
    which = f"{param}[{index}]" if index is not None else param
    return ApiError(
        413,
        f"'{which}' has {plural(prompt_tokens, 'token')}; the model's context length is "
        f"{plural(context_length, 'token')}",
        code="context_length_exceeded",
        param=param,
    )


def completion_body(
    request_id: str, created: int, model: str, version: str, result: CompletionResult
) -> dict[str, Any]:
    """The JSON body of a non-streaming completion."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "version": version,
        "choices": [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason} for c in result.choices],
        "usage": usage(result.prompt_tokens, result.completion_tokens),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The OpenAI usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_chunk(
    request_id: str,
    created: int,
    model: str,
    version: str,
    deltas: list[StreamDelta],
    usage_object: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed chunk (OpenAI text_completion chunk) carrying deltas of one or more choices."""
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "version": version,
        "choices": [{"index": d.index, "text": d.text, "finish_reason": d.finish_reason} for d in deltas],
    }
    if usage_object is not None:
        chunk["usage"] = usage_object
    return chunk


def chat_body(request_id: str, created: int, model: str, version: str, result: CompletionResult) -> dict[str, Any]:
    """The JSON body of a non-streaming chat completion (OpenAI chat.completion)."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "version": version,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
            for c in result.choices
        ],
        "usage": usage(result.prompt_tokens, result.completion_tokens),
    }


def chat_chunk(
    request_id: str,
    created: int,
    model: str,
    version: str,
    deltas: list[StreamDelta],
    usage_object: dict[str, int] | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One streamed chat chunk (OpenAI chat.completion.chunk); the first carries the assistant role."""
    choices = []
    for d in deltas:
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if d.text or first:
            delta["content"] = d.text
        choices.append({"index": d.index, "delta": delta, "finish_reason": d.finish_reason, "logprobs": None})
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "version": version,
        "choices": choices,
    }
    if usage_object is not None:
        chunk["usage"] = usage_object
    return chunk


def merge_deltas(deltas: list[StreamDelta]) -> list[StreamDelta]:
    """Join consecutive deltas of the same choice so one SSE chunk carries each choice once, in order."""
    merged: dict[int, StreamDelta] = {}
    for d in deltas:
        previous = merged.get(d.index)
        if previous is None:
            merged[d.index] = d
        else:
            merged[d.index] = StreamDelta(d.index, previous.text + d.text, d.finish_reason or previous.finish_reason)
    return list(merged.values())


def classify_body(model: str, version: str, result: ClassifyResult) -> dict[str, Any]:
    """The JSON body of a /v1/classify response."""
    return {
        "object": "list",
        "model": model,
        "version": version,
        "data": [
            {"object": "classification", "index": c.index, "label": c.label, "score": c.score, "scores": c.scores}
            for c in result.classifications
        ],
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def sse_event(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (a str such as "[DONE]" is sent verbatim)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode()
