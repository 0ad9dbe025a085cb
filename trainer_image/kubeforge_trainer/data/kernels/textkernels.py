"""Compiled byte loops (numba) over a string column's UTF-8 buffer: the content hash of exact dedup and the one-pass
scan of the fused cleaning operations (fused.py).

numpy and pyarrow kernels each make a pass over every byte, and the cleaning operations with their prefilters took
about a dozen such passes per block; these loops read each row's bytes once. Every function takes the buffer and the
row bounds (utf8_bytes) and works row by row, so no Python runs per row. Compiled on first use (cached on disk).
"""

from __future__ import annotations

import numba
import numpy as np

from . import textmarkup
from .swar import (
    HIGH,
    at_least,
    copy_bytes,
    digits,
    equal,
    find_byte,
    lanes,
    letters,
    load,
    marked,
    store_u64,
    unaligned_u64,
)

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


@numba.njit(inline="always")
def _feed_word(h: np.uint64, word: np.uint64, shift: np.uint64, eight: np.uint64) -> tuple:
    """Eight bytes into the hash state: what _feed does with each of them, in one step."""
    h = _absorb(h, word | (eight << shift))
    return h, (eight >> (np.uint64(64) - shift)) if shift else np.uint64(0), shift


@numba.njit(cache=True, nogil=True)
def _span_hash(data: np.ndarray, start: int, end: int) -> np.uint64:
    h = np.uint64(0)
    i = start
    while i + 8 <= end:
        h = _absorb(h, unaligned_u64(data, i))
        i += 8
    return _finish(h, load(data, i, end - i), end - start)


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
    i = start
    while i < end:
        if i + 8 <= end and length > 0 and not pending_space:
            # Eight bytes at once when none is a control character or outside ASCII and their spaces are single
            # (the byte before is no whitespace): they go in as they are, lower-cased.
            eight = unaligned_u64(data, i)
            space = equal(eight, 0x20)
            # A space last among the eight is single only if the next byte is no whitespace (nor the end).
            last = (space >> np.uint64(63)) and (i + 8 >= end or data[i + 8] <= 0x20)
            if (
                not (eight & HIGH)
                and not (~at_least(eight, 0x20) & HIGH)
                and not (space & (space << np.uint64(8)))
                and not last
            ):
                upper = letters(eight) & ~at_least(eight, 0x61)
                h, word, shift = _feed_word(h, word, shift, eight | (upper >> np.uint64(2)))
                length += 8
                i += 8
                continue
        b = data[i]
        i += 1
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


@numba.njit(inline="always")
def _plain_word(word: np.uint64, valid: np.uint64, last: np.uint64, after_space: np.uint64, classes: tuple) -> tuple:
    """One step of _plain_row: (verdict, word starts, letters and digits, spaces, the bytes lower-cased, whether the
    last byte is a space) of eight bytes (valid: the high bit of each byte that is the row's; last: the bit position
    of the last one's high bit)."""
    html, at, colon, digit = classes
    nothing = np.uint64(0)
    if word & HIGH:
        return EXACT_PATH, nothing, nothing, nothing, word, nothing
    space = equal(word, 0x20) & valid
    # One test first for every byte that may need more than counting: control characters (the line break among
    # them; not the zero padding past a short word's end), '0' to '<' (digits, ':', ';', '<'), '&' and '@'.
    special = ~at_least(word, 0x20) | (at_least(word, 0x30) & ~at_least(word, 0x3D))
    special |= equal(word, 0x26) | equal(word, 0x40)
    digit_marks = nothing
    if special & valid:
        newline = equal(word, 0x0A) & valid
        exact = ~at_least(word, 0x20) & valid & ~newline
        if html:
            exact |= equal(word, 0x3C) | equal(word, 0x26)
        if at:
            exact |= equal(word, 0x40)
        if exact & valid:
            return EXACT_PATH, nothing, nothing, nothing, word, nothing
        stop = newline
        digit_marks = digits(word)
        if colon:
            stop |= equal(word, 0x3A)
        if digit:
            stop |= digit_marks
        if stop & valid:
            return SCAN, nothing, nothing, nothing, word, nothing
    # A space after a space (the previous word's last byte counts), or a space at the row's start.
    previous_space = (space << np.uint64(8)) | (after_space << np.uint64(7))
    if space & previous_space:
        return SCAN, nothing, nothing, nothing, word, nothing
    letter_marks = letters(word)
    upper = letter_marks & ~at_least(word, 0x61)
    starts = ~space & previous_space & valid
    lowered = word | (upper >> np.uint64(2))
    return PLAIN, starts, (digit_marks | letter_marks) & valid, space, lowered, (space >> last) & np.uint64(1)


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
    classes = (
        (exact_classes & HTML) != 0,
        (exact_classes & AT) != 0,
        (scan_classes & COLON) != 0,
        (scan_classes & DIGIT) != 0,
    )
    i = start
    # Whole words, then the last few bytes (padded with zeros, as in _normalized_hash).
    while i + 8 <= end:
        verdict, starts, alnums, space, lowered, after_space = _plain_word(
            unaligned_u64(data, i), HIGH, np.uint64(63), after_space, classes
        )
        if verdict != PLAIN:
            return verdict, 0, 0, 0, h
        words += marked(starts)
        alnum += marked(alnums)
        spaces += marked(space)
        h = _absorb(h, lowered)
        i += 8
    lowered = np.uint64(0)
    if i < end:
        size = end - i
        verdict, starts, alnums, space, lowered, after_space = _plain_word(
            load(data, i, size), lanes(size), np.uint64(8 * size - 1), after_space, classes
        )
        if verdict != PLAIN:
            return verdict, 0, 0, 0, h
        words += marked(starts)
        alnum += marked(alnums)
        spaces += marked(space)
    if after_space and end > start:  # a space at the end
        return SCAN, 0, 0, 0, h
    return PLAIN, words, alnum, spaces, _finish(h, lowered, end - start)


@numba.njit(cache=True, nogil=True)
def _collapse(data: np.ndarray, start: int, end: int, out: np.ndarray, pos: int) -> int:
    """Write the row with each run of spaces and line breaks collapsed (to one space, or to one or two line breaks
    when the run has that many or more) and the ends trimmed, at out[pos:]; returns where it ends. What
    collapseWhitespace does to a row whose only whitespace is spaces and line breaks."""
    first = pos
    newlines = 0
    in_run = False
    next_try = start  # where to try eight bytes at once again (not before eight bytes after a miss)
    i = start
    while i < end:
        if not in_run and i >= next_try and i + 8 <= end:
            # Eight bytes with no two spaces or line breaks in a row and none last (a run could go on) are the same
            # after the collapse, but at the row's start, where a space or line break is trimmed.
            word = unaligned_u64(data, i)
            blank = (equal(word, 0x20) | equal(word, 0x0A)) & ~word
            if not (blank & ((blank >> np.uint64(8)) | np.uint64(0x8000000000000000))) and (
                pos > first or not blank & np.uint64(0x80)
            ):
                store_u64(out, pos, word)
                pos += 8
                i += 8
                continue
            next_try = i + 8
        b = data[i]
        i += 1
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
    newlines = 0  # at least as many as there are (a byte 0x8A counts too)
    for i in range(start, end, 8):
        newlines += marked(equal(load(data, i, min(8, end - i)), 0x0A))
    line_start = np.empty(newlines + 1, dtype=np.int64)
    line_end = np.empty(newlines + 1, dtype=np.int64)
    line_hash = np.empty(newlines + 1, dtype=np.uint64)
    count = 0
    i = start
    while True:
        j = find_byte(data, i, end, 0x0A)
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
def _reserve(out: np.ndarray, pos: int, length: int) -> np.ndarray:
    """out, or a copy twice as large (its first pos bytes kept) when length more bytes do not fit."""
    if pos + length <= len(out):
        return out
    grown = np.empty(max(2 * len(out), pos + length), dtype=np.uint8)
    copy_bytes(out, 0, pos, grown, 0)
    return grown


@numba.njit(cache=True, nogil=True)
def _after_replacements(length: int, replacement: np.ndarray, shortest_match: int) -> np.ndarray:
    """A buffer for a row of this length with every match replaced (matches have shortest_match bytes or more)."""
    return np.empty(length + (length // shortest_match + 1) * len(replacement), dtype=np.uint8)


@numba.njit(cache=True, nogil=True)
def _markup_row(
    data: np.ndarray,
    start: int,
    end: int,
    seen: int,
    untidy: bool,
    settings: np.ndarray,
    markup: tuple,
) -> tuple:
    """The text the operations leave of an ASCII row with HTML or PII-like runs, done here in their order (stripHtml,
    collapseWhitespace, maskPii; normalizeUnicode leaves ASCII and the decoded entities alone): (buffer, its end), or
    (data, BAIL) where the row must take ops.py. untidy: whether the row may have whitespace to collapse."""
    names, name_offsets, values, value_offsets, email, phone = markup
    text, length = data[start:end], end - start
    strip = settings[0] != 0 and (seen & HTML) != 0
    if strip:
        stripped = np.empty(length, dtype=np.uint8)
        length = textmarkup.strip_block_tags(text, 0, length, stripped, 0)
        if length == textmarkup.BAIL:
            return data, textmarkup.BAIL
        text = np.empty(length, dtype=np.uint8)
        length = textmarkup.strip_tags(stripped, 0, length, text, 0)
        decoded = np.empty(length, dtype=np.uint8)
        length = textmarkup.decode_entities(text, 0, length, decoded, 0, names, name_offsets, values, value_offsets)
        if length == textmarkup.BAIL:
            return data, textmarkup.BAIL
        text = decoded
        seen |= AT | DIGIT | COLON  # what decoded entities may bring
    if settings[1] and (untidy or strip):
        collapsed = np.empty(length, dtype=np.uint8)
        text, length = collapsed, _collapse(text, 0, length, collapsed, 0)
    # Collapsing whitespace brings no new '@', digit or colon; an e-mail replacement may.
    if settings[3] and seen & AT:
        masked = _after_replacements(length, email, 6)  # a@b.io
        text, length = masked, textmarkup.mask_emails(text, 0, length, masked, 0, email)
        seen |= DIGIT | COLON
    if settings[4] and seen & (DIGIT | COLON) and textmarkup.ip_like(text, 0, length):
        return data, textmarkup.BAIL
    if settings[5] and seen & DIGIT:
        masked = _after_replacements(length, phone, 9)  # 12 3456789
        text, length = masked, textmarkup.mask_phones(text, 0, length, masked, 0, phone)
    return text, length


@numba.njit(cache=True, nogil=True)
def fused_scan(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    valid: np.ndarray,
    classes: np.ndarray,
    settings: np.ndarray,
    markup: tuple,
) -> tuple:
    """Scan every row once: its kind (UNCHANGED: no operation changes it; REWRITTEN: the operations' result is made
    here; EXACT_PATH: the exact operations must run on it), the features the filters test (of the text the
    operations leave), and the normalised content hash. settings: strip_html, collapse, rewrite (collapse runs
    before the filters that count characters or lines), emails, ips, phones, lines, hash, markup (the rewrites of
    _markup_row may run: the operations come in its order, before the filters) (0 or 1 each). markup: the entity
    table of textmarkup.entity_table and the e-mail and phone replacements (UTF-8).
    Returns (kinds, features, hashes, rewritten bytes, their row starts, their row ends)."""
    strip_html, collapse, rewrite = settings[0] != 0, settings[1] != 0, settings[2] != 0
    emails, ips, phones, lines, want_hash, rewrite_markup = (
        settings[3] != 0,
        settings[4] != 0,
        settings[5] != 0,
        settings[6] != 0,
        settings[7] != 0,
        settings[8] != 0,
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
        if verdict != PLAIN and rewrite_markup:
            # Every other row is rewritten here unless it needs ops.py (the features are those of the result).
            seen, untidy = _classes_seen(buf, a, z)
            if seen & OTHER:
                continue
            text, length = _markup_row(buf, a, z, seen, untidy, settings, markup)
            if length == textmarkup.BAIL:
                continue
            out = _reserve(out, pos, length)
            copy_bytes(text, 0, length, out, pos)
            buf, a, z = out, pos, pos + length
            _text_features(buf, a, z, features, r)
            if features[r, NON_SPACE] == 0:
                continue  # empty: dropEmpty's verdict could depend on where it runs
            out_starts[r], out_ends[r] = a, z
            pos = z
            kind = REWRITTEN
        elif verdict == EXACT_PATH:
            continue
        elif verdict == SCAN:
            seen, untidy, ip_like, phone_like = _scan(buf, a, z, classes, features, r)
            if _needs_exact_path(seen, ip_like, phone_like, strip_html, emails, ips, phones):
                continue
            if untidy and collapse:
                if not rewrite:
                    continue
                out = _reserve(out, pos, z - a)
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
def _classes_seen(data: np.ndarray, start: int, end: int) -> tuple:
    """Eight bytes at a time, the classes of the row's bytes that _markup_row tests (OTHER, HTML, AT, DIGIT, COLON;
    a non-ASCII byte may add HTML, AT or COLON, which only costs a needless rewrite), and whether
    it may have whitespace to collapse (a superset: a space or line break first, last or after another)."""
    seen = 0
    untidy = False
    after_space = np.uint64(1)
    for i in range(start, end, 8):
        size = min(8, end - i)
        word = load(data, i, size)
        valid = lanes(size)
        newline = equal(word, 0x0A)
        if (word & HIGH) or (~at_least(word, 0x20) & valid & ~newline):
            seen |= OTHER
        if equal(word, 0x3C) | equal(word, 0x26):
            seen |= HTML
        if equal(word, 0x40):
            seen |= AT
        if digits(word) & ~word & valid:
            seen |= DIGIT
        if equal(word, 0x3A):
            seen |= COLON
        space = (equal(word, 0x20) | newline) & ~word & valid
        untidy |= (space & ((space << np.uint64(8)) | (after_space << np.uint64(7)))) != 0
        after_space = (space >> np.uint64(8 * size - 1)) & np.uint64(1)
    return seen, untidy or (after_space != 0 and end > start)


@numba.njit(cache=True, nogil=True)
def _text_features(data: np.ndarray, start: int, end: int, features: np.ndarray, row: int) -> None:
    """The filter features of a text of ASCII (no control character but the line break) and characters that are
    no letter, digit or space (counted as one character each), eight bytes at a time."""
    words = 0
    alnum = 0
    spaces = 0
    newlines = 0
    continuation = 0
    after_space = np.uint64(1)  # a word starts at the first byte
    for i in range(start, end, 8):
        size = min(8, end - i)
        word = load(data, i, size)
        valid = lanes(size)
        ascii = ~word & valid
        newline = equal(word, 0x0A) & ascii
        space = (equal(word, 0x20) & ascii) | newline
        words += marked(~space & ((space << np.uint64(8)) | (after_space << np.uint64(7))) & valid)
        alnum += marked((digits(word) | letters(word)) & ascii)
        spaces += marked(space)
        newlines += marked(newline)
        continuation += marked(word & HIGH & ~(word << np.uint64(1)))
        after_space = (space >> np.uint64(8 * size - 1)) & np.uint64(1)
    _set_counts(features, row, end - start - continuation, words, alnum, spaces)
    features[row, HAS_NEWLINE] = 1 if newlines else 0


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
        if offsets[r + 1] > offsets[r]:
            source = data if kinds[r] == UNCHANGED else (rewritten if kinds[r] == REWRITTEN else exact)
            copy_bytes(source, starts[r], starts[r] + offsets[r + 1] - offsets[r], out, offsets[r])
    return out
