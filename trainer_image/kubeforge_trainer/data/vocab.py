"""Vocabulary extension (`tokenizer.extend`, 词表扩充): train a tokenizer on the cleaned corpus with the base
tokenizer's own normaliser, pre-tokeniser and decoder (so new tokens are spelled in the base's alphabet: GPT-2's
byte characters, or SentencePiece's ▁), then append the tokens the base lacks to the base's model.

Old tokens keep their ids (new ones come after the highest id in use) and the base's merges keep their priority (new
merges come after them), so text the base already encoded well encodes as before, and text in a script the base
barely knew (Chinese for an English base) becomes fewer, longer tokens. This is how Chinese-LLaMA merged its
SentencePiece model into LLaMA's; the TrainingJob resizes the embeddings to the new vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from .errors import DataPipelineError

FIELD = "spec.tokenizer.extend"


def base_kind(base_json: str, wanted: str | None) -> str:
    """The model kind (bpe or unigram) to train, checked against the base's; DataPipelineError naming the field."""
    kind = json.loads(base_json)["model"]["type"]
    if kind not in ("BPE", "Unigram"):
        raise DataPipelineError(f"{FIELD}: the base tokenizer's model is {kind}; only BPE and Unigram can be extended")
    if wanted is not None and wanted != kind.lower():
        raise DataPipelineError(f"{FIELD}.model: {wanted} tokens cannot be added to a {kind} base tokenizer")
    return kind.lower()


def train_like(
    base_json: str, batches: Iterable[list[str]], vocab_size: int, min_frequency: int, model: str | None = None
) -> Tokenizer:
    """A tokenizer of the base's kind, trained on the texts through the base's normaliser and pre-tokeniser."""
    kind = base_kind(base_json, model)
    config = json.loads(base_json)
    tok = Tokenizer.from_str(base_json)
    if kind == "bpe":
        byte_level = '"ByteLevel"' in json.dumps(config.get("pre_tokenizer"))
        tok.model = models.BPE(byte_fallback=bool(config["model"].get("byte_fallback")))
        trainer: Any = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [],
            show_progress=False,
        )
    else:
        tok.model = models.Unigram()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False)
    tok.train_from_iterator(_flatten(batches), trainer=trainer)
    return tok


def _flatten(batches: Iterable[list[str]]) -> Iterator[str]:
    for batch in batches:
        yield from batch


def merge(base_json: str, trained: Tokenizer) -> tuple[str, int]:
    """(the base's tokenizers JSON with the trained tokens it lacks appended, how many were added)."""
    base = json.loads(base_json)
    new = json.loads(trained.to_str())["model"]
    model = base["model"]
    added_texts = {t["content"] for t in base.get("added_tokens", [])}
    if model["type"] == "BPE":
        vocab: dict[str, int] = model["vocab"]
        used = [*vocab.values(), *(t["id"] for t in base.get("added_tokens", []))]
        next_id = max(used, default=-1) + 1
        fresh = [t for t, _ in sorted(new["vocab"].items(), key=lambda kv: kv[1]) if t not in vocab]
        fresh = [t for t in fresh if t not in added_texts]
        for token in fresh:
            vocab[token] = next_id
            next_id += 1
        merges = model["merges"]
        as_strings = bool(merges) and isinstance(merges[0], str)
        known = {tuple(_pair(m)) for m in merges}
        for entry in new["merges"]:
            a, b = _pair(entry)
            if (a, b) not in known and a in vocab and b in vocab and a + b in vocab:
                merges.append(f"{a} {b}" if as_strings else [a, b])
                known.add((a, b))
        return json.dumps(base, ensure_ascii=False), len(fresh)
    pieces: list[list[Any]] = model["vocab"]
    if any(t["id"] >= len(pieces) for t in base.get("added_tokens", [])):
        raise DataPipelineError(f"{FIELD}: the base Unigram tokenizer has added tokens after its vocabulary")
    have = {p for p, _ in pieces}
    fresh_pieces = [[p, s] for p, s in new["vocab"] if p not in have and p not in added_texts]
    pieces.extend(fresh_pieces)
    return json.dumps(base, ensure_ascii=False), len(fresh_pieces)


def _pair(entry: str | list[str]) -> list[str]:
    return entry.split(" ", 1) if isinstance(entry, str) else list(entry)
