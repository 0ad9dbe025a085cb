"""Conversations and preference pairs (`tokenizer.task: chat` / `preference`): reading them from a row, carrying
them through the cleaning steps as one text, and rendering them with a chat template into input_ids and labels.

A conversation travels through the pipeline as the working table's text column: its segments (message contents, and
for a preference pair the chosen and rejected answers) joined by SEPARATOR, a private-use character no cleaning step
touches (it is neither whitespace, markup, a letter of any script nor part of a PII pattern), with the segments'
roles in the PARTS column. So every cleaning step applies to the message texts, exact and near dedup see the whole
conversation, and the tokenize stage cuts the text back into messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DataPipelineError

SEPARATOR = "\ue000"
"""Joins a conversation's segments in the text column (U+E000, private use)."""
ROLES = ("system", "user", "assistant")
CHOSEN, REJECTED = "chosen", "rejected"
IGNORE_INDEX = -100
"""The label of a token no loss is computed on (PyTorch's cross-entropy ignore_index)."""

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
"""The template of a tokenizer without one: plain-text turn headers (no special tokens the base lacks), the answer
ended by the tokenizer's eos token so the model learns to stop."""


class RowProblem(ValueError):
    """A row that cannot become a training example; str() is the reason (an errored row, never a silent drop)."""


# ---- reading -----------------------------------------------------------------------------------------------------


def segments(record: dict, fields: Any, task: str) -> tuple[list[str], list[str]]:
    """(segment texts, their roles) of one source row: a chat conversation, or a preference pair's prompt messages
    followed by its chosen and rejected answers. Raises RowProblem naming the field."""
    if task == "chat":
        messages = _conversation(record, fields)
        if not any(m[0] == "assistant" for m in messages):
            raise RowProblem("the conversation has no assistant message")
    else:
        messages = _preference_prompt(record, fields)
        messages = [*messages, (CHOSEN, _answer(record, fields.chosen)), (REJECTED, _answer(record, fields.rejected))]
    for _, content in messages:
        if SEPARATOR in content:
            raise RowProblem("a message contains U+E000, which the data step reserves")
    return [c for _, c in messages], [r for r, _ in messages]


def _conversation(record: dict, fields: Any) -> list[tuple[str, str]]:
    if record.get(fields.messages) is not None:
        return _messages(record[fields.messages], fields.messages)
    system = _system(record, fields)
    if record.get(fields.instruction) is not None:
        instruction = _string(record, fields.instruction)
        extra = _string(record, fields.input) if record.get(fields.input) is not None else ""
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [*system, ("user", user), ("assistant", _string(record, fields.output))]
    if record.get(fields.prompt) is not None:
        return [*system, ("user", _string(record, fields.prompt)), ("assistant", _string(record, fields.response))]
    raise RowProblem(f"no {fields.messages!r}, {fields.instruction!r} or {fields.prompt!r} field")


def _preference_prompt(record: dict, fields: Any) -> list[tuple[str, str]]:
    for name in (fields.prompt, fields.messages):
        value = record.get(name)
        if value is None:
            continue
        messages = [*_system(record, fields), ("user", value)] if isinstance(value, str) else _messages(value, name)
        if not any(content.strip() for role, content in messages if role == "user"):
            raise RowProblem(f"field {name!r}: the prompt is empty")
        return messages
    raise RowProblem(f"no {fields.prompt!r} or {fields.messages!r} field")


def _system(record: dict, fields: Any) -> list[tuple[str, str]]:
    value = record.get(fields.system)
    return [("system", _string(record, fields.system))] if value is not None else []


def _string(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        what = "missing" if value is None else f"{type(value).__name__}, expected a string"
        raise RowProblem(f"field {name!r} is {what}")
    return value


def _messages(value: Any, name: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem(f"field {name!r} is not a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowProblem(f"field {name!r}[{i}] is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowProblem(f"field {name!r}[{i}].role is {role!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowProblem(f"field {name!r}[{i}].content is not a string")
        out.append((role, content))
    return out


def _answer(record: dict, name: str) -> str:
    """A preference answer: a string, or a list of messages whose assistant contents are joined."""
    value = record.get(name)
    if isinstance(value, list):
        parts = [c for role, c in _messages(value, name) if role == "assistant"]
        if not parts:
            raise RowProblem(f"field {name!r} has no assistant message")
        return "\n".join(parts)
    return _string(record, name)


def joined(texts: list[str]) -> str:
    """The text-column form of a conversation's segments."""
    return SEPARATOR.join(texts)


def split_text(text: str | None, parts: list[str]) -> list[str]:
    """The segments of a cleaned text column value; RowProblem when cleaning merged or removed a separator."""
    pieces = (text or "").split(SEPARATOR)
    if len(pieces) != len(parts):
        raise RowProblem(f"cleaning left {len(pieces)} of the conversation's {len(parts)} messages")
    return pieces


def messages_of(pieces: list[str], parts: list[str]) -> list[dict[str, str]]:
    """OpenAI-style messages of a conversation's segments (the roles that are message roles)."""
    return [{"role": r, "content": c} for c, r in zip(pieces, parts, strict=True) if r in ROLES]


def prompt_text(pieces: list[str], parts: list[str]) -> str:
    """What keeps a prompt in one split: for chat every message before the last assistant message, for a
    preference pair its prompt messages (roles and contents)."""
    if CHOSEN in parts:
        end = parts.index(CHOSEN)
    else:
        end = max((i for i, r in enumerate(parts) if r == "assistant"), default=len(parts))
    return SEPARATOR.join(f"{r}:{c}" for c, r in zip(pieces[:end], parts[:end], strict=True))


# ---- rendering ---------------------------------------------------------------------------------------------------


def spans(render: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, trained) pieces: each assistant turn is the text its message adds
    to the rendering of the conversation before it with the generation prompt (the turn's content and end marker);
    everything else is not trained. render(messages, add_generation_prompt) renders the template."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], True)
        turn = render(messages[: i + 1], False)
        if not prompt.startswith(done) or not turn.startswith(prompt):
            raise DataPipelineError(
                "spec.tokenizer.chatTemplate: the chat template does not render a conversation as the rendering of "
                "its beginning followed by the rest, so the assistant tokens cannot be found"
            )
        pieces += [(prompt[len(done) :], False), (turn[len(prompt) :], True)]
        done = turn
    full = render(messages, False)
    if not full.startswith(done):
        raise DataPipelineError("spec.tokenizer.chatTemplate: the chat template renders a conversation inconsistently")
    if full[len(done) :]:
        pieces.append((full[len(done) :], False))
    return [(text, trained) for text, trained in pieces if text]


def encode_spans(encode: Any, pieces: list[tuple[str, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) of rendered pieces, each encoded on its own (as a prompt is at inference, before the
    answer is generated): labels are the ids on trained pieces and IGNORE_INDEX elsewhere."""
    encoded = encode([text for text, _ in pieces])
    ids = [np.asarray(e, dtype=np.int32) for e in encoded]
    labels = [
        a if trained else np.full(len(a), IGNORE_INDEX, np.int32) for a, (_, trained) in zip(ids, pieces, strict=True)
    ]
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(ids), np.concatenate(labels)


def truncate_chat(ids: np.ndarray, labels: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The truncation rule of chat rows: keep the first max_length tokens (later turns are cut, the earliest kept);
    RowProblem when no assistant token is left to train on."""
    ids, labels = ids[:max_length], labels[:max_length]
    if not (labels != IGNORE_INDEX).any():
        raise RowProblem(f"no assistant token within the first {max_length} tokens (spec.tokenizer.sequenceLength)")
    return ids, labels


def render_preference(
    render: Any, encode: Any, pieces: list[str], parts: list[str], max_length: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) of the chosen and the rejected sequence of a preference pair (prompt + answer, rendered
    with the chat template); RowProblem for an empty prompt or answer, or equal answers."""
    prompt_messages = messages_of(pieces[:-2], parts[:-2])
    chosen, rejected = pieces[-2], pieces[-1]
    if not any(m["content"].strip() for m in prompt_messages if m["role"] == "user"):
        raise RowProblem("the prompt is empty")
    if not chosen.strip() or not rejected.strip():
        raise RowProblem(f"the {CHOSEN if not chosen.strip() else REJECTED} answer is empty")
    if chosen == rejected:
        raise RowProblem("chosen and rejected are equal")
    prompt = render(prompt_messages, True)
    answers = []
    for answer in (chosen, rejected):
        full = render([*prompt_messages, {"role": "assistant", "content": answer}], False)
        if not full.startswith(prompt):
            raise DataPipelineError(
                "spec.tokenizer.chatTemplate: the chat template does not render prompt + answer as the rendered "
                "prompt followed by the answer"
            )
        answers.append(full[len(prompt) :])
    prompt_ids, *answer_ids = (np.asarray(e, dtype=np.int32) for e in encode([prompt, *answers]))
    return preference_pair(prompt_ids, answer_ids, max_length)


def preference_pair(
    prompt_ids: np.ndarray, answers: list[np.ndarray], max_length: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) of prompt + each answer, prompt tokens IGNORE_INDEX; the truncation rule of preference
    rows: the prompt is kept whole and each answer cut to fit max_length; RowProblem when the prompt leaves no room."""
    room = max_length - len(prompt_ids)
    if room < 1:
        raise RowProblem(
            f"the prompt has {len(prompt_ids)} tokens, leaving no room in {max_length} (spec.tokenizer.sequenceLength)"
        )
    masked = np.full(len(prompt_ids), IGNORE_INDEX, np.int32)
    out = []
    for answer in answers:
        answer = answer[:room]
        out.append((np.concatenate([prompt_ids, answer]), np.concatenate([masked, answer])))
    return out
