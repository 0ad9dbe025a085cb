"""64-bit hashes of strings and integers: the content hashes of exact dedup, splits and the leakage check; the keys
of hash splits and MinHash's words."""

from __future__ import annotations

import hashlib
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import kernels
from .kernels import textkernels, textscan
from .kernels.textclasses import COLLAPSE_ANY_WHITESPACE

_MASK64 = (1 << 64) - 1


def hash_strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit BLAKE2b hash of each string's UTF-8 bytes (null hashes as the empty string), as uint64."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.fill_null(values, "")
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offset_type = (
        np.int64 if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) else np.int32
    )
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[values.offset : values.offset + n + 1]
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    blake = hashlib.blake2b
    bounds = offsets.tolist()
    digests = b"".join(blake(data[start:end], digest_size=8).digest() for start, end in pairwise(bounds))
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def mix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied elementwise: a bijective, well-mixed uint64 -> uint64."""
    z = np.asarray(values, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def seeded(values: np.ndarray, seed: int) -> np.ndarray:
    """Hashes of values under a seed: mix64(values ^ mix64(seed))."""
    salt = mix64(np.array([seed & _MASK64], dtype=np.uint64))[0]
    return mix64(np.asarray(values, dtype=np.uint64) ^ salt)


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes mapped to floats in [0, 1)."""
    return (np.asarray(hashes, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def normalized_text(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Lower-cased text with whitespace runs collapsed to one space and the ends trimmed."""
    text = textscan.combined(pc.fill_null(text, ""))
    non_ascii = textscan.non_ascii_rows(textscan.utf8_bytes(text))
    # ascii_lower is several times cheaper than utf8_lower and the same on ASCII rows; the others take utf8_lower.
    lowered = textscan.on_rows(
        pc.ascii_lower(text), non_ascii, lambda _: pc.utf8_lower(text.filter(pa.array(non_ascii)))
    )
    # Runs of plain spaces are squeezed by a byte deletion (the same result as the regex on them); only rows with a
    # line break, another ASCII whitespace or a non-ASCII character can still change.
    squeezed = textscan.squeeze_spaces(lowered)
    view = textscan.utf8_bytes(squeezed)
    # A superset of the rows with a line break, another ASCII whitespace or a non-ASCII character: every ASCII control
    # character counts, the cheaper test.
    needs_regex = textscan.rows_with(view, textscan.control_or_non_ascii(view.data))
    collapsed = textscan.on_rows(
        squeezed, needs_regex, lambda rows: pc.replace_substring_regex(rows, COLLAPSE_ANY_WHITESPACE, " ")
    )
    return pc.utf8_trim_whitespace(collapsed)


_P1, _P2, _P3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)


def _absorb(h: np.ndarray, word: np.ndarray) -> np.ndarray:
    h = h ^ (word * _P1)
    h = (h << np.uint64(27)) | (h >> np.uint64(37))
    return h * _P2 + _P3


def row_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """textkernels.hash_rows in numpy (the reference path): every row's eight-byte words absorbed in order, a word
    position at a time across the rows still that long, then the tail word with the length mixed in."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    lengths = ends - starts
    h = np.zeros(len(starts), dtype=np.uint64)
    # Eight zero bytes after the data, so every tail word is an in-bounds eight-byte load masked to its length.
    padded = np.concatenate([np.asarray(data, dtype=np.uint8), np.zeros(8, dtype=np.uint8)])
    powers = np.uint64(1) << (np.arange(8, dtype=np.uint64) * np.uint64(8))

    def words(at: np.ndarray) -> np.ndarray:
        return (padded[at[:, None] + np.arange(8)].astype(np.uint64) * powers).sum(axis=1, dtype=np.uint64)

    full = lengths // 8
    with np.errstate(over="ignore"):
        for k in range(int(full.max()) if len(full) else 0):
            rows = np.flatnonzero(full > k)
            h[rows] = _absorb(h[rows], words(starts[rows] + 8 * k))
        tail = lengths - 8 * full
        keep = np.where(
            tail > 0, (np.uint64(1) << (tail.astype(np.uint64) * np.uint64(8))) - np.uint64(1), np.uint64(0)
        )
        word = words(starts + 8 * full) & keep.astype(np.uint64)
        h = _absorb(h, word ^ (lengths.astype(np.uint64) << np.uint64(56)))
    return mix64(h)


def content_hashes(text: pa.Array | pa.ChunkedArray, normalize: bool = True) -> np.ndarray:
    """The exact-duplicate key of each document: textkernels.hash_rows of its (normalised) text (null hashes as the
    empty string). Most ASCII rows are normalised on the fly by the hashing loop; the others by normalized_text."""
    text = textscan.combined(pc.fill_null(text, ""))
    if not kernels.enabled():  # the reference path: the same hash, of the text normalized_text builds
        view = textscan.utf8_bytes(normalized_text(text) if normalize else text)
        return row_hashes(view.data, view.starts, view.ends)
    view = textscan.utf8_bytes(text)
    if not normalize:
        return textkernels.hash_rows(view.data, view.starts, view.ends)
    # Outside ASCII, and for the separators U+001C..U+001F (trimmed at the ends as whitespace, kept inside), the
    # normalisation needs the Unicode rules of normalized_text.
    unicode_rows = textscan.rows_with(view, (view.data >= np.uint8(0x80)) | (view.data - np.uint8(0x1C) < 4))
    hashes = np.empty(len(text), dtype=np.uint64)
    ascii_rows = np.flatnonzero(~unicode_rows)
    hashes[ascii_rows] = textkernels.normalized_hash_rows(view.data, view.starts, view.ends, ascii_rows)
    if unicode_rows.any():
        other = textscan.utf8_bytes(normalized_text(text.filter(pa.array(unicode_rows))))
        hashes[unicode_rows] = textkernels.hash_rows(other.data, other.starts, other.ends)
    return hashes
