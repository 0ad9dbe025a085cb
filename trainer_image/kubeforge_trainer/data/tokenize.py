"""Tokenizers and token layout: load a Hugging Face `tokenizers` file or train a byte-level BPE, then either pack
documents into fixed-length sequences (language modelling) or keep one truncated row per document (classification).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .. import storage
from .errors import DataPipelineError
from .kernels import textscan

SLICE_BYTES = 16 << 20
"""Text encoded at once (see encode)."""
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
TOKENIZER_FILE = "tokenizer.json"
# Names under which loaded tokenizers commonly carry padding and end-of-text tokens, most specific first.
PAD_NAMES = (PAD_TOKEN, "[PAD]", "<|pad|>", "<|padding|>")
EOS_NAMES = (EOS_TOKEN, "<|endoftext|>", "</s>", "<|eos|>", "[SEP]")


def train_bpe(batches: Iterable[list[str]], vocab_size: int, min_frequency: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on the texts; <pad> is id 0 and <eos> id 1."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_flatten(batches), trainer=trainer)
    return tokenizer


def _flatten(batches: Iterable[list[str]]) -> Iterator[str]:
    for batch in batches:
        yield from batch


def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer from a tokenizer.json file or a directory holding one (local path or object-store URI)."""
    candidates = [path] if path.endswith(".json") else [storage.join(path, TOKENIZER_FILE), path]
    for candidate in candidates:
        try:
            if storage.exists(candidate) and not _is_dir(candidate):
                return Tokenizer.from_str(storage.read_text(candidate))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataPipelineError(f"spec.tokenizer.path: cannot read {candidate}: {exc}") from None
        except Exception as exc:  # the tokenizers library raises a plain Exception on a malformed file
            raise DataPipelineError(f"spec.tokenizer.path: {candidate} is not a tokenizers file: {exc}") from None
    raise DataPipelineError(f"spec.tokenizer.path: no tokenizer file at {path}")


_BUILT: list[tuple[str, Tokenizer]] = []


def from_json(text: str) -> Tokenizer:
    """The tokenizer of a tokenizer.json text, built once per process while the text is the same: every tokenize task
    of a run passes the same text, and building the tokenizer and what encode learns of it costs ~75 ms a task. The
    tokenizer is shared: use it to encode, do not change it."""
    if not _BUILT or _BUILT[0][0] != text:
        _BUILT[:] = [(text, Tokenizer.from_str(text))]
    return _BUILT[0][1]


def _is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, inner = storage.resolve(uri)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def special_token_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """(pad id, eos id), adding <pad> and <eos> as special tokens when the tokenizer has neither kind."""
    pad = _find(tokenizer, PAD_NAMES)
    eos = _find(tokenizer, EOS_NAMES)
    if pad is None:
        tokenizer.add_special_tokens([PAD_TOKEN])
        pad = tokenizer.token_to_id(PAD_TOKEN)
    if eos is None:
        tokenizer.add_special_tokens([EOS_TOKEN])
        eos = tokenizer.token_to_id(EOS_TOKEN)
    return pad, eos


def _find(tokenizer: Tokenizer, names: tuple[str, ...]) -> int | None:
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def encode(tokenizer: Tokenizer, texts: list[str] | pa.Array) -> pa.ListArray:
    """Token ids of each text (no special tokens added), as list<int32>, on this process's one core."""
    # Ray runs one task per core: the tokenizer's own thread pool would oversubscribe it.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if not len(texts):
        return pa.array([], pa.list_(pa.int32()))
    facts = _facts(tokenizer)
    if not facts.splits_at_spaces:
        return _encode_all(facts.plain, texts if isinstance(texts, list) else texts.to_pylist())
    text = pc.fill_null(texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string()), "")
    # A slice of rows at a time, for the reason minhash.signatures gives: temporaries the allocator can reuse.
    slices = textscan.row_slices(textscan.utf8_bytes(text), SLICE_BYTES)
    parts = [_encode_by_words(facts, text.slice(start, stop - start)) for start, stop in slices]
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _encode_all(tokenizer: Tokenizer, texts: list[str]) -> pa.ListArray:
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode_batch(texts, add_special_tokens=False)
    return pa.array([e.ids for e in encodings], pa.list_(pa.int32()))


@dataclass(frozen=True)
class _Facts:
    tokenizer: Tokenizer
    size: int
    splits_at_spaces: bool
    digest: str
    plain: Tokenizer
    """The tokenizer, or a copy of it without the padding and truncation its file may enable: the data step wants
    every id of a document (classification truncates on its own; padding would add ids)."""


_LAST_FACTS: list[_Facts] = []


def _facts(tokenizer: Tokenizer) -> _Facts:
    """What encoding needs to know of a tokenizer, worked out once for the tokenizer in use (a task builds one) and
    again when tokens are added to it."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if _LAST_FACTS and _LAST_FACTS[0].tokenizer is tokenizer and _LAST_FACTS[0].size == size:
        return _LAST_FACTS[0]
    text = tokenizer.to_str()
    config = json.loads(text)
    pre = config.get("pre_tokenizer") or {}
    splits = (
        config.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space", True)
        and pre.get("use_regex", True)
        and not any(any(c.isspace() for c in t.get("content", "")) for t in config.get("added_tokens", []))
    )
    plain = tokenizer
    if tokenizer.padding is not None or tokenizer.truncation is not None:
        plain = Tokenizer.from_str(text)
        plain.no_padding()
        plain.no_truncation()
    _LAST_FACTS[:] = [_Facts(tokenizer, size, splits, hashlib.sha256(text.encode()).hexdigest(), plain)]
    return _LAST_FACTS[0]


def splits_at_spaces(tokenizer: Tokenizer) -> bool:
    """Whether every space followed by a non-space starts a new pre-token, so a text's ids are the concatenation of
    the ids of its pieces cut there: true for byte-level BPE (GPT-2's split) without a normaliser or a prefix space,
    and special tokens without whitespace."""
    return _facts(tokenizer).splits_at_spaces


class _WordIds:
    """The ids of the words (pieces between word starts) this process has encoded, for one tokenizer: Ray reuses a
    worker process for task after task, and natural text repeats its vocabulary, so most words of a block were
    encoded for an earlier one. Bounded: cleared when it outgrows MAX_WORDS."""

    MAX_WORDS = 1 << 21

    def __init__(self) -> None:
        self.clear("")

    def clear(self, digest: str) -> None:
        """Forget every word; hold words of the tokenizer with this digest from now on."""
        self.digest = digest
        self.words = pa.array([], pa.string())
        self.offsets = np.zeros(1, dtype=np.int64)
        self.values = np.zeros(0, dtype=np.int32)

    def lookup(self, facts: _Facts, words: pa.Array) -> np.ndarray:
        """The index of each of the (distinct) words in this store, encoding and adding those it lacks."""
        digest = facts.digest
        if digest != self.digest or len(self.words) + len(words) > self.MAX_WORDS:
            self.clear(digest)
        found = pc.fill_null(pc.index_in(words, value_set=self.words), -1).to_numpy().astype(np.int64)
        missing = np.flatnonzero(found < 0)
        if len(missing):
            new = words.take(pa.array(missing))
            counts, ids = _encode_words(facts.plain, new.to_pylist())
            found[missing] = len(self.words) + np.arange(len(missing))
            self.words = pa.concat_arrays([self.words, new.cast(pa.string())])
            self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(counts)])
            self.values = np.concatenate([self.values, ids])
        return found


def _encode_words(tokenizer: Tokenizer, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(token count of each word, the ids of all in order), each word encoded as if alone: one call with the words as
    a pre-tokenized sequence, whose words go through the pre-tokenizer and the model one by one. A batch of one-word
    encodings gives the same ids, but builds an object and a list per word (1.5x the time)."""
    encoding = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
    ids = np.array(encoding.ids, dtype=np.int32)
    counts = np.bincount(np.array(encoding.word_ids, dtype=np.int64), minlength=len(words))
    return counts, ids


_WORD_IDS = _WordIds()


def _encode_by_words(facts: _Facts, texts: pa.Array) -> pa.ListArray:
    """Encode each distinct word (a piece from a word start to the next: the word with its leading space and what
    trails it) once, through a store of words kept across blocks, and assemble the documents from them: the same ids
    as encoding the whole texts, several times faster on natural text. The words are cut straight from the texts'
    bytes, without copying them."""
    view = textscan.utf8_bytes(texts)
    word_starts = np.zeros(len(view.data), dtype=bool)
    word_starts[textscan.spaces_before_words(view)] = True
    words, first_word = textscan.cut_rows(view, word_starts)
    encoded = pc.dictionary_encode(words)
    stored = _WORD_IDS.lookup(facts, encoded.dictionary)[encoded.indices.to_numpy()]
    # Gather each word's ids from the store, in order.
    firsts, lengths = _WORD_IDS.offsets[stored], np.diff(_WORD_IDS.offsets)[stored]
    ends = np.cumsum(lengths)
    gather = np.repeat(firsts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)
    token_offsets = np.append(0, ends)[first_word]
    return pa.ListArray.from_arrays(pa.array(token_offsets.astype(np.int32)), pa.array(_WORD_IDS.values[gather]))


def with_eos(ids: pa.ListArray, eos_id: int) -> np.ndarray:
    """The documents' ids concatenated, each followed by eos_id (int32): the stream packing cuts into sequences."""
    offsets = ids.offsets.to_numpy()
    values = ids.values.to_numpy()
    n = len(ids)
    lengths = np.diff(offsets)
    out = np.full(len(values) + n, eos_id, dtype=np.int32)
    out[np.arange(len(values)) + np.repeat(np.arange(n), lengths)] = values
    return out


def pack(tokens: np.ndarray, sequence_length: int) -> pa.ListArray:
    """Rows of exactly sequence_length tokens (list<int32>); len(tokens) must be a multiple of it."""
    if len(tokens) % sequence_length:
        raise ValueError(f"{len(tokens)} tokens do not fill whole sequences of {sequence_length}")
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(tokens, pa.int32()), sequence_length)
    return fixed.cast(pa.list_(pa.int32()))


def truncate(ids: pa.ListArray, max_length: int) -> pa.ListArray:
    """Each row cut to at most max_length ids."""
    return pc.list_slice(ids, 0, max_length).cast(pa.list_(pa.int32()))


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write tokenizer.json (local path)."""
    tokenizer.save(str(path))


def encode_lists(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens added, no padding or truncation), as Python lists."""
    plain = _facts(tokenizer).plain
    return [e.ids for e in plain.encode_batch(texts, add_special_tokens=False)]
