"""Tokenizers and token layout: load a Hugging Face `tokenizers` file or train a byte-level BPE, then either pack
documents into fixed-length sequences (language modelling) or keep one truncated row per document (classification).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .. import storage
from .errors import DataPipelineError
from .textclasses import NOT_WHITESPACE

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


def encode(tokenizer: Tokenizer, texts: list[str]) -> pa.ListArray:
    """Token ids of each text (no special tokens added), as list<int32>, on this process's one core."""
    # Ray runs one task per core: the tokenizer's own thread pool would oversubscribe it.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if not texts:
        return pa.array([], pa.list_(pa.int32()))
    if splits_at_spaces(tokenizer):
        return _encode_by_segments(tokenizer, pa.array(texts, pa.string()))
    return _encode_all(tokenizer, texts)


def _encode_all(tokenizer: Tokenizer, texts: list[str]) -> pa.ListArray:
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode_batch(texts, add_special_tokens=False)
    return pa.array([e.ids for e in encodings], pa.list_(pa.int32()))


def splits_at_spaces(tokenizer: Tokenizer) -> bool:
    """Whether every space followed by a non-space starts a new pre-token, so a text's ids are the concatenation of
    the ids of its pieces cut there: true for byte-level BPE (GPT-2's split) without a normaliser or a prefix space,
    and special tokens without whitespace."""
    cached = _SPLITS_AT_SPACES.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    config = json.loads(tokenizer.to_str())
    pre = config.get("pre_tokenizer") or {}
    result = (
        config.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space", True)
        and pre.get("use_regex", True)
        and not any(any(c.isspace() for c in t.get("content", "")) for t in config.get("added_tokens", []))
    )
    _SPLITS_AT_SPACES[id(tokenizer)] = (tokenizer, result)
    return result


_SPLITS_AT_SPACES: dict[int, tuple[Tokenizer, bool]] = {}
_CUT = "\x00"
# A space followed by a character that is not whitespace (GPT-2's \s is Unicode White_Space): a pre-token starts there.
_PIECE_START = "( " + NOT_WHITESPACE + ")"


def _encode_by_segments(tokenizer: Tokenizer, texts: pa.Array) -> pa.ListArray:
    """Encode each distinct piece (a word with its leading space and trailing punctuation) once and assemble the
    documents from them: the same ids as encoding the whole texts, several times faster on natural text (words
    repeat). Texts holding NUL, the cut marker, are encoded whole."""
    import pyarrow.compute as pc

    has_nul = pc.fill_null(pc.match_substring(texts, _CUT), False).to_numpy(zero_copy_only=False)
    if has_nul.any():
        whole = _encode_all(tokenizer, texts.filter(pa.array(has_nul)).to_pylist())
        rest = _encode_by_segments(tokenizer, texts.filter(pa.array(~has_nul)))
        order = np.argsort(np.concatenate([np.flatnonzero(has_nul), np.flatnonzero(~has_nul)]), kind="stable")
        return pa.concat_arrays([whole, rest]).take(pa.array(order))
    marked = pc.replace_substring_regex(texts, _PIECE_START, _CUT + "\\1")
    pieces = pc.split_pattern(marked, _CUT)
    parent = pc.list_parent_indices(pieces).to_numpy()
    flat = pc.list_flatten(pieces)
    nonempty = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)  # a text starting with a piece: "" before it
    parent, flat = parent[nonempty], flat.filter(pa.array(nonempty))
    encoded = pc.dictionary_encode(flat)
    unique_ids = _encode_all(tokenizer, encoded.dictionary.to_pylist())
    piece_ids = unique_ids.take(encoded.indices)
    lengths = pc.list_value_length(piece_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    per_text = np.bincount(parent, weights=lengths, minlength=len(texts)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_text)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(piece_ids))


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
    import pyarrow.compute as pc

    return pc.list_slice(ids, 0, max_length).cast(pa.list_(pa.int32()))


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write tokenizer.json (local path)."""
    tokenizer.save(str(path))
