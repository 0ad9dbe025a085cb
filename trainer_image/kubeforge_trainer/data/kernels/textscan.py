"""Byte-level scans of a string column's UTF-8 buffer with numpy: which rows contain a byte, a byte class or a run of
bytes of a class, and how many bytes of a class each row has.

A vectorised comparison over the whole buffer costs a few percent of a pyarrow substring or RE2 kernel call over the
same text (those run per row, and RE2 cannot skip ahead for a pattern without a literal prefix), so the cleaning
operations use these scans as prefilters: a row the scan leaves out cannot match, and skips the expensive kernel.
Every scan works on raw UTF-8 bytes; a byte below 0x80 is always the ASCII character it encodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .textclasses import ASCII_SPACES, NON_ASCII_SPACE_BYTES

_ONES = np.uint64(0x0101010101010101)
_TOP_BYTE = np.uint64(56)


@dataclass(frozen=True)
class Utf8Bytes:
    """The bytes of a string array: data runs from the first row's start to the last row's end."""

    data: np.ndarray
    """uint8, every row's bytes in order."""
    starts: np.ndarray
    """int64, where each row starts in data."""
    ends: np.ndarray
    """int64, where each row ends in data."""
    valid: np.ndarray
    """bool, false for null rows (whose bytes, if any, are ignored)."""

    def __len__(self) -> int:
        return len(self.starts)


def utf8_bytes(text: pa.Array | pa.ChunkedArray) -> Utf8Bytes:
    """A zero-copy view of the bytes of a string or binary array (a chunked array is combined first)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks != 1 else text.chunk(0)
    n = len(text)
    large = pa.types.is_large_string(text.type) or pa.types.is_large_binary(text.type)
    buffers = text.buffers()
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Utf8Bytes(np.zeros(0, dtype=np.uint8), empty, empty, np.zeros(0, dtype=bool))
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32)[text.offset : text.offset + n + 1]
    offsets = offsets.astype(np.int64)
    base, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(buffers[2], dtype=np.uint8)[base:end] if buffers[2] is not None else np.zeros(0, np.uint8)
    valid = np.ones(n, dtype=bool) if text.null_count == 0 else text.is_valid().to_numpy(zero_copy_only=False)
    return Utf8Bytes(data, offsets[:-1] - base, offsets[1:] - base, valid)


def rows_with(view: Utf8Bytes, hits: np.ndarray) -> np.ndarray:
    """Per row, whether any position of its bytes is marked in hits (a bool array as long as view.data)."""
    hits = np.ascontiguousarray(hits, dtype=bool)
    n = len(view)
    if n == 0 or len(view.data) == 0:
        return np.zeros(n, dtype=bool)
    marks = hits.view(np.uint8)
    if view.starts[-1] >= len(marks):
        # reduceat needs every start to be a valid index: empty rows at the end start at len(data), past the end,
        # so add a padding byte (only then: the copy costs as much as the scan).
        marks = np.append(marks, np.uint8(0))
    # reduceat gives an empty row the element at its start instead of nothing: fixed by the length test.
    found = np.bitwise_or.reduceat(marks, view.starts).astype(bool)
    found &= view.ends > view.starts
    return found & view.valid


def byte_class(data: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per byte, whether table (256 entries) marks it; a comparison per run of marked values, far cheaper than a
    table lookup on large buffers (the buffers are reused: a fresh large array costs its page faults)."""
    marked = np.flatnonzero(np.asarray(table) != 0)
    if len(marked) == 0:
        return np.zeros(len(data), dtype=bool)
    result = np.empty(len(data), dtype=bool)
    inside = result
    shifted = None
    breaks = np.flatnonzero(np.diff(marked) != 1)
    for run, (low, high) in enumerate(
        zip(marked[np.r_[0, breaks + 1]], marked[np.r_[breaks, len(marked) - 1]], strict=True)
    ):
        if run == 1:
            inside = np.empty(len(data), dtype=bool)  # the first run wrote straight into result
        if low == high:
            np.equal(data, np.uint8(low), out=inside)
        elif high == 255:
            np.greater_equal(data, np.uint8(low), out=inside)
        else:
            # Unsigned wrap-around: one subtraction and one comparison test low <= byte <= high.
            shifted = np.empty(len(data), dtype=np.uint8) if shifted is None else shifted
            np.subtract(data, np.uint8(low), out=shifted)
            np.less_equal(shifted, np.uint8(high - low), out=inside)
        if run > 0:
            np.bitwise_or(result, inside, out=result)
    return result


def byte_set_table(values: bytes) -> np.ndarray:
    """A 256-entry table marking the given byte values."""
    table = np.zeros(256, dtype=np.uint8)
    table[list(values)] = 1
    return table


def rows_with_byte(view: Utf8Bytes, value: int) -> np.ndarray:
    """Per row, whether its bytes contain value."""
    return rows_with(view, view.data == np.uint8(value))


def rows_with_any(view: Utf8Bytes, table: np.ndarray) -> np.ndarray:
    """Per row, whether any of its bytes is marked in table."""
    return rows_with(view, byte_class(view.data, table))


def control_or_non_ascii(data: np.ndarray) -> np.ndarray:
    """Per byte, whether it is below 0x20 (an ASCII control character) or 0x80 and above (part of a non-ASCII
    character): two passes, cheaper than testing a set of values one by one."""
    shifted = np.subtract(data, np.uint8(0x20))
    return np.greater_equal(shifted, np.uint8(0x60), out=np.empty(len(data), dtype=bool))


def non_ascii_rows(view: Utf8Bytes) -> np.ndarray:
    """Per row, whether it has a byte of 0x80 or above (a character outside ASCII)."""
    return rows_with(view, view.data >= np.uint8(0x80))


def rows_with_sequence(view: Utf8Bytes, tables: list[np.ndarray]) -> np.ndarray:
    """Per row, whether bytes of the given classes occur consecutively (class i at position p + i). A superset: a
    sequence that starts in a row and ends in the next one marks the first row too, which only costs a wasted
    check."""
    classes: dict[bytes, np.ndarray] = {}
    for table in tables:  # each distinct class is computed once
        classes.setdefault(np.asarray(table).tobytes(), byte_class(view.data, table))
    return rows_with(view, sequence_hits([classes[np.asarray(t).tobytes()] for t in tables]))


def sequence_hits(marks: list[np.ndarray]) -> np.ndarray:
    """Positions p where marks[i][p + i] holds for every i (the marks are bool arrays of one length)."""
    hits = marks[0].copy()
    size = len(hits)
    for shift, mark in enumerate(marks[1:], start=1):
        hits[: size - shift] &= mark[shift:]
        hits[size - shift :] = False
    return hits


_VISIBLE_ASCII = np.ones(256, dtype=bool)
_VISIBLE_ASCII[[ord(c) for c in ASCII_SPACES]] = False
_VISIBLE_ASCII[0x80:] = False  # decided by the full character, below


def spaces_before_words(view: Utf8Bytes) -> np.ndarray:
    """Positions (int64, ascending) of the plain spaces followed, in the same row, by a character that is not
    whitespace: where GPT-2's pre-tokenizer starts a word (with its leading space)."""
    data = view.data
    if len(data) < 2:
        return np.zeros(0, dtype=np.int64)
    spaces = np.flatnonzero(data[:-1] == np.uint8(0x20))
    following = data[spaces + 1]
    starts = _VISIBLE_ASCII[following]
    # A space before a character outside ASCII starts a word unless that character is a Unicode space.
    other = np.flatnonzero(following >= np.uint8(0x80))
    if len(other):
        at = spaces[other] + 1
        unicode_space = np.zeros(len(other), dtype=bool)
        for encoded in NON_ASCII_SPACE_BYTES:
            same = np.ones(len(other), dtype=bool)
            for k, byte in enumerate(encoded):
                same &= data[np.minimum(at + k, len(data) - 1)] == np.uint8(byte)
            unicode_space |= same
        starts[other] = ~unicode_space
    # The last byte of a row is followed by the next row's first byte, not by a character of its own row.
    row_last = np.zeros(len(data), dtype=bool)
    row_last[view.ends[view.ends > view.starts] - 1] = True
    starts &= ~row_last[spaces]
    return spaces[starts]


def cut_rows(view: Utf8Bytes, cut_before: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The rows cut into consecutive pieces at every row start and before every byte cut_before marks (a bool array
    as long as the bytes, updated in place), as a string array over the same bytes (no copy); and the index of each
    row's first piece (len(view) + 1 entries: row i's pieces are [first[i], first[i + 1]))."""
    size = len(view.data)
    cut_before[view.starts[view.starts < size]] = True
    bounds = np.flatnonzero(cut_before)
    large = size >= 1 << 31
    offsets = np.append(bounds, size).astype(np.int64 if large else np.int32)
    pieces = pa.Array.from_buffers(
        pa.large_string() if large else pa.string(),
        len(bounds),
        [None, pa.py_buffer(offsets), pa.py_buffer(view.data)],
    )
    return pieces, np.searchsorted(bounds, np.append(view.starts, size))


def count_in_rows(view: Utf8Bytes, marks: np.ndarray) -> np.ndarray:
    """Per row, how many of its bytes are marked (int64; 0 for null rows)."""
    n = len(view)
    if n == 0 or len(view.data) == 0:
        return np.zeros(n, dtype=np.int64)
    before = _marks_before(marks, np.append(view.starts, view.ends[-1]))
    return np.where(view.valid, np.diff(before), 0)


def _marks_before(marks: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """How many marks lie before each position: prefix sums over 8-byte words, then the partial word.

    Summing the eight 0/1 bytes of a word by one multiplication (the sum lands in the top byte) keeps the prefix sum
    an eighth as long as the buffer; np.cumsum or np.add.reduceat over the bytes costs several times more."""
    words = -(-len(marks) // 8) + 1
    padded = np.zeros(words * 8, dtype=np.uint8)
    padded[: len(marks)] = marks
    blocks = padded.view("<u8")
    with np.errstate(over="ignore"):
        sums = (blocks * _ONES) >> _TOP_BYTE
        # Accumulate in uint64 (the type of sums): a cumsum that casts to int64 on the way is ten times slower.
        cumulative = np.zeros(words + 1, dtype=np.uint64)
        np.cumsum(sums, out=cumulative[1:])
        word = positions >> 3
        # The bytes of a word before the position are its low-order bytes (little-endian view).
        low_bytes = (np.left_shift(np.uint64(1), (positions & 7).astype(np.uint64) * np.uint64(8))) - np.uint64(1)
        partial = ((blocks[word] & low_bytes) * _ONES) >> _TOP_BYTE
    return (cumulative[word] + partial).astype(np.int64)


def on_rows(
    text: pa.ChunkedArray | pa.Array,
    rows: np.ndarray | pa.Array | pa.ChunkedArray,
    transform: Callable[[pa.Array], pa.Array],
) -> pa.Array:
    """text with transform applied to the rows where rows is true only (the others cannot change: skip them)."""
    text = combined(text)
    if not isinstance(rows, np.ndarray):
        rows = combined(rows).fill_null(False).to_numpy(zero_copy_only=False)
    if not rows.any():
        return text
    mask = pa.array(rows, pa.bool_())
    return pc.replace_with_mask(text, mask, combined(transform(text.filter(mask))))


def row_slices(view: Utf8Bytes, max_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive rows, in order, each with at most max_bytes of text (or one longer row)."""
    bounds = [0]
    while bounds[-1] < len(view.starts):
        start = bounds[-1]
        stop = int(np.searchsorted(view.ends, view.starts[start] + max_bytes, side="right"))
        bounds.append(max(stop, start + 1))
    return list(itertools.pairwise(bounds))


def combined(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array of a chunked array (no copy when it has a single chunk)."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def keep_bytes(text: pa.ChunkedArray | pa.Array, keep: np.ndarray) -> pa.Array:
    """text with only the bytes keep marks (a bool array as long as the view's data); the caller keeps or drops whole
    characters, so the result is valid UTF-8. Null rows stay null."""
    text = combined(text)
    view = utf8_bytes(text)
    if len(view.data) == 0 or keep.all():
        return text
    bounds = np.append(view.starts, view.ends[-1])
    large = pa.types.is_large_string(text.type) or pa.types.is_large_binary(text.type)
    offsets = _marks_before(keep, bounds).astype(np.int64 if large else np.int32)
    validity = None
    if text.null_count:
        validity = pa.py_buffer(np.packbits(view.valid, bitorder="little"))
    return pa.Array.from_buffers(
        text.type, len(text), [validity, pa.py_buffer(offsets), pa.py_buffer(view.data[keep])], text.null_count
    )


def non_ascii_chars(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each row's characters outside ASCII only (every byte of those is 0x80 or above)."""
    view = utf8_bytes(text)
    return keep_bytes(text, view.data >= np.uint8(0x80))


def squeeze_spaces(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    """text with every run of plain spaces (U+0020) cut to one space, by deleting each space that follows a space of
    the same row: a few vectorised passes over the bytes instead of a regex replacement per match. Only the rows
    with such a run are rebuilt."""
    text = combined(text)
    view = utf8_bytes(text)
    if len(view.data) < 2:
        return text
    return on_rows(text, rows_with(view, _repeated_spaces(view)), _squeeze_all)


def _repeated_spaces(view: Utf8Bytes) -> np.ndarray:
    """The spaces that follow a space of the same row."""
    data = view.data
    space = data == np.uint8(0x20)
    repeated = np.zeros(len(data), dtype=bool)
    np.logical_and(space[1:], space[:-1], out=repeated[1:])
    # A space at the start of a row follows the previous row's bytes, not a space of its own row.
    repeated[view.starts[view.starts < len(data)]] = False
    return repeated


def _squeeze_all(text: pa.Array) -> pa.Array:
    view = utf8_bytes(text)
    if len(view.data) < 2:
        return text
    return keep_bytes(text, ~_repeated_spaces(view))
