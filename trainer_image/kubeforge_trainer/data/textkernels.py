"""Compiled byte loops (numba) over a string column's UTF-8 buffer: the content hash of exact dedup and the one-pass
scan of the fused cleaning operations (fused.py).

numpy and pyarrow kernels each make a pass over every byte, and the cleaning operations with their prefilters took
about a dozen such passes per block; these loops read each row's bytes once. Every function takes the buffer and the
row bounds (utf8_bytes) and works row by row, so no Python runs per row. Compiled on first use (cached on disk).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_SPLIT1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLIT2 = np.uint64(0x94D049BB133111EB)

# Byte classes of the fused scan (one table lookup per byte).
SPACE, NEWLINE, ALNUM, DIGIT, OTHER, HTML, AT, COLON = 1, 2, 4, 8, 16, 32, 64, 128
"""SPACE is U+0020; OTHER marks every byte the fused scan leaves to the exact operations: non-ASCII bytes and the
ASCII control characters but the line break (tab and carriage return among them)."""


def byte_classes() -> np.ndarray:
    """The 256-entry class table of the fused scan."""
    table = np.zeros(256, dtype=np.uint8)
    table[0x20] = SPACE
    table[0x0A] = NEWLINE
    table[[*range(0x41, 0x5B), *range(0x61, 0x7B)]] = ALNUM
    table[0x30:0x3A] = ALNUM | DIGIT
    table[[b for b in range(0x20) if b != 0x0A]] = OTHER
    table[0x80:] = OTHER
    table[[ord("<"), ord("&")]] = HTML
    table[ord("@")] = AT
    table[ord(":")] = COLON
    return table


CLASSES = byte_classes()

# Row kinds of the fused scan (and the two other verdicts of its word-at-a-time loop).
UNCHANGED, REWRITTEN, EXACT_PATH = 0, 1, 2
PLAIN, SCAN = 3, 4

# The fused scan's per-row features, columns of its feature matrix.
CHARS, WORDS, ALNUMS, NON_SPACE, LINES, REPEATED, HAS_NEWLINE = range(7)
FEATURES = 7


@numba.njit(inline="always")
def _absorb(h: np.uint64, word: np.uint64) -> np.uint64:
    h ^= word * _P1
    h = (h << np.uint64(27)) | (h >> np.uint64(37))
    return h * _P2 + _P3


@numba.njit(inline="always")
def _finish(h: np.uint64, word: np.uint64, length: np.int64) -> np.uint64:
    h = _absorb(h, word ^ (np.uint64(length) << np.uint64(56)))
    h ^= h >> np.uint64(30)
    h *= _SPLIT1
    h ^= h >> np.uint64(27)
    h *= _SPLIT2
    return h ^ (h >> np.uint64(31))


@numba.njit(inline="always")
def _feed(h: np.uint64, word: np.uint64, shift: np.uint64, byte: int) -> tuple:
    """One byte into the hash state (h, the word being filled, its bit position)."""
    word |= np.uint64(byte) << shift
    shift += np.uint64(8)
    if shift == np.uint64(64):
        return _absorb(h, word), np.uint64(0), np.uint64(0)
    return h, word, shift


@numba.njit(cache=True, nogil=True)
def _span_hash(data: np.ndarray, start: int, end: int) -> np.uint64:
    h, word, shift = np.uint64(0), np.uint64(0), np.uint64(0)
    for i in range(start, end):
        h, word, shift = _feed(h, word, shift, data[i])
    return _finish(h, word, end - start)


@numba.njit(cache=True, nogil=True)
def hash_rows(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes: eight bytes at a time, little-endian, the length mixed in last."""
    out = np.empty(len(starts), dtype=np.uint64)
    for r in range(len(starts)):
        out[r] = _span_hash(data, starts[r], ends[r])
    return out


@numba.njit(cache=True, nogil=True)
def _normalized_hash(data: np.ndarray, start: int, end: int) -> np.uint64:
    """hash_rows of the row's normalised text (hashing.normalized_text: ASCII letters lower-cased, each run of ASCII
    whitespace one space, the ends trimmed) without building it: the same bytes go into the same hash. For rows of
    ASCII without U+001C..U+001F (which the trimming also removes)."""
    h, word, shift = np.uint64(0), np.uint64(0), np.uint64(0)
    length = 0
    pending_space = False
    for i in range(start, end):
        b = data[i]
        if b == 0x20 or (0x09 <= b <= 0x0D):
            pending_space = length > 0
            continue
        if pending_space:
            pending_space = False
            h, word, shift = _feed(h, word, shift, 0x20)
            length += 1
        h, word, shift = _feed(h, word, shift, b + 0x20 if 0x41 <= b <= 0x5A else b)
        length += 1
    return _finish(h, word, length)


@numba.njit(cache=True, nogil=True)
def normalized_hash_rows(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """_normalized_hash of the given rows (ASCII rows: the normalisation of the others needs Unicode tables)."""
    out = np.empty(len(rows), dtype=np.uint64)
    for k in range(len(rows)):
        r = rows[k]
        out[k] = _normalized_hash(data, starts[r], ends[r])
    return out


@numba.njit(inline="always")
def _set_counts(features: np.ndarray, row: int, chars: int, words: int, alnum: int, spaces: int) -> None:
    features[row, CHARS] = chars
    features[row, WORDS] = words
    features[row, ALNUMS] = alnum
    features[row, NON_SPACE] = chars - spaces


@numba.njit(cache=True, nogil=True)
def _scan(data: np.ndarray, start: int, end: int, classes: np.ndarray, features: np.ndarray, row: int) -> tuple:
    """One row's features (into features[row]) and what the operations could change in it:
    (classes seen, whitespace to collapse, an IPv4- or IPv6-like run, a phone-like run of digits)."""
    seen = 0
    alnum = 0
    spaces = 0
    words = 0
    newline_run = 0
    untidy = False
    digits = 0
    phone_like = False  # what ops._phone_rows looks for: 3 digits, at most one of " .-", 3 digits
    three_then_separator = False
    digit_dot = False
    ip_like = False
    colons = 0
    prev = NEWLINE  # the start of a row acts as whitespace: a word starts at its first byte
    prev_byte = 0
    for i in range(start, end):
        b = data[i]
        c = classes[b]
        seen |= c
        if c & (SPACE | NEWLINE):
            spaces += 1
            if c & NEWLINE:
                newline_run = newline_run + 1 if prev & NEWLINE else 1
                if newline_run >= 3 or prev & SPACE:
                    untidy = True
            elif prev & (SPACE | NEWLINE):
                untidy = True
            three_then_separator = digits >= 3 and b == 0x20
            digits = 0
            digit_dot = False
        else:
            if prev & (SPACE | NEWLINE):
                words += 1
            if c & ALNUM:
                alnum += 1
            if c & DIGIT:
                if digit_dot:
                    ip_like = True
                digits += 1
                if digits >= 6 or (digits >= 3 and three_then_separator):
                    phone_like = True
                digit_dot = False
            else:
                digit_dot = b == 0x2E and digits > 0
                three_then_separator = digits >= 3 and (b == 0x20 or b == 0x2E or b == 0x2D)
                digits = 0
                if c & COLON:
                    colons += 1
                    if prev_byte == 0x3A:
                        ip_like = True
        prev = c
        prev_byte = b
    if end > start and (classes[data[start]] & (SPACE | NEWLINE) or prev & (SPACE | NEWLINE)):
        untidy = True
    if colons >= 7:
        ip_like = True
    _set_counts(features, row, end - start, words, alnum, spaces)
    features[row, HAS_NEWLINE] = 1 if seen & NEWLINE else 0
    return seen, untidy, ip_like, phone_like


_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)


@intrinsic
def _unaligned_u64(typingctx, data, index):
    """The eight bytes at data[index:index + 8] as one little-endian uint64: a single unaligned load, where numba
    would otherwise load and shift each byte."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(array.data, [args[1]])
        pointer = builder.bitcast(address, ir.IntType(64).as_pointer())
        return builder.load(pointer, align=1)

    return numba.types.uint64(data, index), codegen


@numba.njit(inline="always")
def _load(data: np.ndarray, i: int, count: int) -> np.uint64:
    """count (at most 8) bytes from data[i], little-endian (the caller keeps i + count within data)."""
    if count >= 8:
        return _unaligned_u64(data, i)
    word = np.uint64(0)
    for k in range(count):
        word |= np.uint64(data[i + k]) << np.uint64(8 * k)
    return word


@numba.njit(inline="always")
def _at_least(word: np.uint64, value: int) -> np.uint64:
    """The high bit of each byte (of an ASCII word) that is >= value."""
    return ((word | _HIGH) - np.uint64(value) * _ONES) & _HIGH


@numba.njit(inline="always")
def _equal(word: np.uint64, value: int) -> np.uint64:
    """The high bit of each byte (of an ASCII word) equal to value."""
    return ~_at_least(word ^ (np.uint64(value) * _ONES), 1) & _HIGH


@numba.njit(inline="always")
def _count(marks: np.uint64) -> int:
    """How many bytes have their high bit marked."""
    return int(((marks >> np.uint64(7)) * _ONES) >> np.uint64(56))


@numba.njit(cache=True, nogil=True)
def _plain_row(data: np.ndarray, start: int, end: int, exact_classes: int, scan_classes: int) -> tuple:
    """Eight bytes at a time, a row of ASCII letters, digits, punctuation and single spaces between words: no operation
    changes it. Returns (PLAIN, words, letters and digits, spaces, normalised hash); at the first byte that needs more,
    it stops with EXACT_PATH where that is already certain (a byte outside ASCII, a control character other than the
    line break, a byte of the classes in exact_classes) or SCAN where the byte-by-byte scan must decide (a line break,
    a space at either end or after another, a byte of the classes in scan_classes: COLON, DIGIT)."""
    words = 0
    alnum = 0
    spaces = 0
    h = np.uint64(0)
    after_space = np.uint64(1)  # the row's start: a word starts at its first byte, and it must not be a space
    html = (exact_classes & HTML) != 0
    at = (exact_classes & AT) != 0
    colon = (scan_classes & COLON) != 0
    digit = (scan_classes & DIGIT) != 0
    i = start
    while i < end:
        count = min(8, end - i)
        word = _load(data, i, count)
        valid = _HIGH if count == 8 else _HIGH & ((np.uint64(1) << np.uint64(8 * count)) - np.uint64(1))
        if word & _HIGH:
            return EXACT_PATH, 0, 0, 0, h
        space = _equal(word, 0x20) & valid
        newline = _equal(word, 0x0A) & valid
        # Control characters other than the line break (the zero padding past a short word's end is not one).
        exact = ~_at_least(word, 0x20) & valid & ~newline
        if html:
            exact |= _equal(word, 0x3C) | _equal(word, 0x26)
        if at:
            exact |= _equal(word, 0x40)
        if exact & valid:
            return EXACT_PATH, 0, 0, 0, h
        stop = newline
        digits = _at_least(word, 0x30) & ~_at_least(word, 0x3A)
        folded = word | (np.uint64(0x20) * _ONES)
        letters = _at_least(folded, 0x61) & ~_at_least(folded, 0x7B)
        if colon:
            stop |= _equal(word, 0x3A)
        if digit:
            stop |= digits
        # A space after a space (the previous word's last byte counts), or a space at the row's start.
        previous_space = (space << np.uint64(8)) | (after_space << np.uint64(7))
        stop |= space & previous_space
        if stop & valid:
            return SCAN, 0, 0, 0, h
        starts = ~space & previous_space & valid
        words += _count(starts)
        alnum += _count((digits | letters) & valid)
        spaces += _count(space)
        upper = letters & ~_at_least(word, 0x61)
        lowered = word | (upper >> np.uint64(2))
        # The last, short word goes to _finish (its padding is zero bytes, as in _normalized_hash).
        h = _absorb(h, lowered) if count == 8 else _finish(h, lowered, end - start)
        after_space = (space >> np.uint64(8 * count - 1)) & np.uint64(1)
        i += 8
    if after_space and end > start:  # a space at the end
        return SCAN, 0, 0, 0, h
    if (end - start) % 8 == 0:
        h = _finish(h, np.uint64(0), end - start)
    return PLAIN, words, alnum, spaces, h


@numba.njit(cache=True, nogil=True)
def _collapse(data: np.ndarray, start: int, end: int, out: np.ndarray, pos: int) -> int:
    """Write the row with each run of spaces and line breaks collapsed (to one space, or to one or two line breaks
    when the run has that many or more) and the ends trimmed, at out[pos:]; returns where it ends. What
    collapseWhitespace does to a row whose only whitespace is spaces and line breaks."""
    first = pos
    newlines = 0
    in_run = False
    for i in range(start, end):
        b = data[i]
        if b == 0x20 or b == 0x0A:
            in_run = True
            newlines += b == 0x0A
            continue
        if in_run and pos > first:
            if newlines == 0:
                out[pos] = 0x20
                pos += 1
            else:
                for _ in range(min(newlines, 2)):
                    out[pos] = 0x0A
                    pos += 1
        in_run = False
        newlines = 0
        out[pos] = b
        pos += 1
    return pos


@numba.njit(cache=True, nogil=True)
def _same_bytes(data: np.ndarray, a: int, b: int, length: int) -> bool:
    for k in range(length):  # noqa: SIM110 (numba compiles the loop; all() over a generator it does not)
        if data[a + k] != data[b + k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _repeated_lines(data: np.ndarray, start: int, end: int) -> tuple:
    """(non-blank lines, those that repeat an earlier line) of a row, each line trimmed of spaces; lines are compared
    byte for byte (a hash only groups them)."""
    newlines = 0
    for i in range(start, end):
        newlines += data[i] == 0x0A
    line_start = np.empty(newlines + 1, dtype=np.int64)
    line_end = np.empty(newlines + 1, dtype=np.int64)
    line_hash = np.empty(newlines + 1, dtype=np.uint64)
    count = 0
    i = start
    while True:
        j = i
        while j < end and data[j] != 0x0A:
            j += 1
        a, z = i, j
        while a < z and data[a] == 0x20:
            a += 1
        while z > a and data[z - 1] == 0x20:
            z -= 1
        if z > a:
            line_start[count] = a
            line_end[count] = z
            line_hash[count] = _span_hash(data, a, z)
            count += 1
        if j >= end:
            break
        i = j + 1
    order = np.argsort(line_hash[:count])
    distinct = 0
    group = 0
    for k in range(count):
        if k == 0 or line_hash[order[k]] != line_hash[order[k - 1]]:
            group = k
        line = order[k]
        length = line_end[line] - line_start[line]
        new = True
        for m in range(group, k):
            other = order[m]
            if line_end[other] - line_start[other] == length and _same_bytes(
                data, line_start[other], line_start[line], length
            ):
                new = False
                break
        distinct += new
    return count, count - distinct


@numba.njit(inline="always")
def _needs_exact_path(
    seen: int, ip_like: bool, phone_like: bool, strip_html: bool, emails: bool, ips: bool, phones: bool
) -> bool:
    if seen & OTHER:
        return True
    if strip_html and seen & HTML:
        return True
    if emails and seen & AT:
        return True
    return (ips and ip_like) or (phones and phone_like)


@numba.njit(cache=True, nogil=True)
def fused_scan(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    valid: np.ndarray,
    classes: np.ndarray,
    settings: np.ndarray,
) -> tuple:
    """Scan every row once: its kind (UNCHANGED: no operation changes it; REWRITTEN: only its whitespace collapses,
    done here; EXACT_PATH: the exact operations must run on it), the features the filters test (of the text the
    operations leave), and the normalised content hash. settings: strip_html, collapse, rewrite (collapse runs
    before the filters that count characters or lines), emails, ips, phones, lines, hash (0 or 1 each).
    Returns (kinds, features, hashes, rewritten bytes, their row starts, their row ends)."""
    strip_html, collapse, rewrite = settings[0] != 0, settings[1] != 0, settings[2] != 0
    emails, ips, phones, lines, want_hash = (
        settings[3] != 0,
        settings[4] != 0,
        settings[5] != 0,
        settings[6] != 0,
        settings[7] != 0,
    )
    exact_classes = (HTML if strip_html else 0) | (AT if emails else 0)
    scan_classes = (COLON if ips else 0) | (DIGIT if (ips or phones) else 0)
    n = len(starts)
    kinds = np.empty(n, dtype=np.uint8)
    features = np.zeros((n, FEATURES), dtype=np.int64)
    hashes = np.zeros(n, dtype=np.uint64)
    out = np.empty(len(data), dtype=np.uint8)
    out_starts = np.zeros(n, dtype=np.int64)
    out_ends = np.zeros(n, dtype=np.int64)
    pos = 0
    for r in range(n):
        kinds[r] = EXACT_PATH
        if not valid[r]:
            continue
        buf, a, z = data, starts[r], ends[r]
        kind = UNCHANGED
        verdict, words, alnum, spaces, h = _plain_row(buf, a, z, exact_classes, scan_classes)
        if verdict == EXACT_PATH:
            continue
        if verdict == SCAN:
            seen, untidy, ip_like, phone_like = _scan(buf, a, z, classes, features, r)
            if _needs_exact_path(seen, ip_like, phone_like, strip_html, emails, ips, phones):
                continue
            if untidy and collapse:
                if not rewrite:
                    continue
                end = _collapse(data, a, z, out, pos)
                buf, a, z = out, pos, end
                # Usually plain once collapsed: features and hash at word speed.
                verdict, words, alnum, spaces, h = _plain_row(buf, a, z, exact_classes, scan_classes)
                if verdict != PLAIN:
                    seen, untidy, ip_like, phone_like = _scan(buf, a, z, classes, features, r)
                    if untidy or _needs_exact_path(seen, ip_like, phone_like, strip_html, emails, ips, phones):
                        continue
                out_starts[r], out_ends[r] = a, z
                pos = end
                kind = REWRITTEN
        if verdict == PLAIN:  # no line breaks; _plain_row hashed it
            _set_counts(features, r, z - a, words, alnum, spaces)
            hashes[r] = h
        else:
            if lines and features[r, HAS_NEWLINE]:
                features[r, LINES], features[r, REPEATED] = _repeated_lines(buf, a, z)
            if want_hash:
                hashes[r] = _normalized_hash(buf, a, z)
        kinds[r] = kind
    return kinds, features, hashes, out[:pos], out_starts, out_ends


@numba.njit(cache=True, nogil=True)
def gather(
    data: np.ndarray,
    rewritten: np.ndarray,
    exact: np.ndarray,
    kinds: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """The bytes of each output row, one after another: [starts, ends) of data, rewritten or exact as its kind says
    (offsets: where each row goes; a null row has length 0 there)."""
    out = np.empty(offsets[-1], dtype=np.uint8)
    for r in range(len(kinds)):
        length = offsets[r + 1] - offsets[r]
        if length == 0:
            continue
        source = data if kinds[r] == UNCHANGED else (rewritten if kinds[r] == REWRITTEN else exact)
        out[offsets[r] : offsets[r + 1]] = source[starts[r] : starts[r] + length]
    return out
