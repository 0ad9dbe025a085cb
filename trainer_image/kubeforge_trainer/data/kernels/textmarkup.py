"""Compiled rewrites of one row for the fused pass (textkernels.fused_scan): stripHtml's tag replacements and entity
decoding, and maskPii's e-mail and phone replacements, each giving exactly what its RE2 expression (ops.py) gives
under pyarrow's replace-all: the leftmost match, the alternatives and quantifiers tried in RE2's (Perl's) order,
then on from the match's end.

They take ASCII rows (the fused pass sends the others to ops.py) and rows holding the characters of the entities they
decode. Where a row needs what they do not do (a comment, a script or style element, a numeric or unlisted entity,
an IP-like run), they return -1 and the row takes ops.py.
"""

from __future__ import annotations

import functools
import html.entities
import re
from collections.abc import Iterable

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import ops
from .swar import copy_bytes, digits, equal, find_byte, skip_to, unaligned_u64

BAIL = -1
"""What a rewrite returns for a row it leaves to ops.py."""


def _packed(words: Iterable[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as one buffer and their offsets."""
    words = list(words)
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in words], out=offsets[1:])
    return np.frombuffer(b"".join(words), dtype=np.uint8).copy(), offsets


BLOCK_TAGS, BLOCK_TAG_OFFSETS = _packed(
    name.encode() for name in ops.BLOCK_TAGS.replace("h[1-6]", "h1|h2|h3|h4|h5|h6").split("|")
)
"""The names of ops._BLOCK_TAG_RE, lower case."""
ELEMENTS_LEFT_TO_OPS, ELEMENT_OFFSETS = _packed([b"script", b"style", b"noscript"])
"""Elements whose content ops._SCRIPT_STYLE_RE removes with them."""


@functools.cache
def entity_table(forms: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The named entities the pass decodes (names without '&' and ';', and their UTF-8 values): those whose value is
    one printable ASCII character, or one two-byte character that is no letter, digit or space, is normalised in
    every form given (by pyarrow's and Python's tables) and is its own lower case. Text of ASCII and such characters
    keeps every fused operation's ASCII rules: the features and the content hash are counted on its bytes."""
    names, values = [], []
    for key, value in sorted(html.entities.html5.items()):
        name = key[:-1]
        # What ops._ENTITY_RE takes for a name, so that decoding one is what lets html.unescape run on the row.
        if not key.endswith(";") or len(value) != 1 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{1,31}", name):
            continue
        if 0x21 <= ord(value) <= 0x7E or 0x80 <= ord(value) < 0x800:
            names.append(name)
            values.append(value)
    candidates = pa.array(values)
    two_byte = np.array([ord(v) >= 0x80 for v in values])
    plain = ~pc.match_substring_regex(candidates, r"[\p{L}\p{N}\s]").to_numpy(zero_copy_only=False)
    plain &= pc.equal(pc.utf8_lower(candidates), candidates).to_numpy(zero_copy_only=False)
    plain &= np.array([v.lower() == v and not v.isspace() for v in values])
    for form in forms:
        stable = ops.stable_two_byte(form)
        plain &= np.array([ord(v) >= 0x800 or stable[ord(v)] for v in values])
    keep = np.flatnonzero(~two_byte | plain)
    name_bytes, name_offsets = _packed(names[i].encode() for i in keep)
    value_bytes, value_offsets = _packed(values[i].encode() for i in keep)
    return name_bytes, name_offsets, value_bytes, value_offsets


@numba.njit(nogil=True)
def _is_word(b: int) -> bool:
    return (0x30 <= b <= 0x39) or (0x41 <= b <= 0x5A) or (0x61 <= b <= 0x7A) or b == 0x5F


@numba.njit(nogil=True)
def _is_letter(b: int) -> bool:
    return (0x41 <= b <= 0x5A) or (0x61 <= b <= 0x7A)


@numba.njit(nogil=True)
def _is_digit(b: int) -> bool:
    return 0x30 <= b <= 0x39


@numba.njit(nogil=True)
def _next_number(data: np.ndarray, i: int, end: int) -> int:
    """The index of the first digit, '+' or '(' (what a phone number starts with) in data[i:end], or end; eight bytes
    a step past the words with none."""
    while i < end:
        while i + 8 <= end:
            word = unaligned_u64(data, i)
            if digits(word) | equal(word, 0x2B) | equal(word, 0x28):
                break
            i += 8
        stop = min(i + 8, end)
        while i < stop:
            b = data[i]
            if _is_digit(b) or b == 0x2B or b == 0x28:
                return i
            i += 1
    return end


@numba.njit(cache=True, nogil=True)
def _find_name(data: np.ndarray, start: int, end: int, names: np.ndarray, offsets: np.ndarray, fold: bool) -> int:
    """The index of data[start:end] among the names (ASCII case folded when fold), or -1."""
    length = end - start
    for k in range(len(offsets) - 1):
        if offsets[k + 1] - offsets[k] != length:
            continue
        same = True
        for m in range(length):
            b = data[start + m]
            if fold and 0x41 <= b <= 0x5A:
                b += 0x20
            if b != names[offsets[k] + m]:
                same = False
                break
        if same:
            return k
    return -1


@numba.njit(cache=True, nogil=True)
def _tag_end(data: np.ndarray, i: int, end: int) -> int:
    """Where [^<>]*> from i ends (after the '>'), or -1 when a '<' or the end comes first."""
    while i < end:
        b = data[i]
        if b == 0x3E:
            return i + 1
        if b == 0x3C:
            return -1
        i += 1
    return -1


@numba.njit(cache=True, nogil=True)
def strip_block_tags(data: np.ndarray, start: int, end: int, out: np.ndarray, pos: int) -> int:
    """ops._BLOCK_TAG_RE replaced by a line break (data[start:end] into out[pos:]; returns the end there), or BAIL
    for a row with a comment or a script, style or noscript element, which ops._SCRIPT_STYLE_RE and ops._COMMENT_RE
    change first."""
    copied = start
    i = find_byte(data, start, end, 0x3C)
    while i < end:
        if i + 3 < end and data[i + 1] == 0x21 and data[i + 2] == 0x2D and data[i + 3] == 0x2D:
            return BAIL
        j = i + 1
        if j < end and data[j] == 0x2F:
            j += 1
        k = j
        while k < end and _is_word(data[k]):
            k += 1
        if j == i + 1 and _find_name(data, j, k, ELEMENTS_LEFT_TO_OPS, ELEMENT_OFFSETS, True) >= 0:
            return BAIL
        # The name alternatives each end at \b: the whole run of word characters must be one of them.
        closed = _tag_end(data, k, end) if _find_name(data, j, k, BLOCK_TAGS, BLOCK_TAG_OFFSETS, True) >= 0 else -1
        if closed >= 0:
            pos = copy_bytes(data, copied, i, out, pos)
            out[pos] = 0x0A
            pos += 1
            copied = closed
        i = find_byte(data, max(i + 1, closed), end, 0x3C)
    return copy_bytes(data, copied, end, out, pos)


@numba.njit(cache=True, nogil=True)
def strip_tags(data: np.ndarray, start: int, end: int, out: np.ndarray, pos: int) -> int:
    """ops._TAG_RE removed (data[start:end] into out[pos:]; returns the end there)."""
    copied = start
    i = find_byte(data, start, end, 0x3C)
    while i + 1 < end:
        b = data[i + 1]
        closed = _tag_end(data, i + 1, end) if _is_letter(b) or b == 0x2F or b == 0x21 or b == 0x3F else -1
        if closed >= 0:
            pos = copy_bytes(data, copied, i, out, pos)
            copied = closed
        i = find_byte(data, max(i + 1, closed), end, 0x3C)
    return copy_bytes(data, copied, end, out, pos)


@numba.njit(nogil=True)
def _ends_entity_name(b: int) -> bool:
    # html.unescape's named reference: [^\t\n\f <&#;]{1,32}
    return b == 0x09 or b == 0x0A or b == 0x0C or b == 0x20 or b == 0x3C or b == 0x26 or b == 0x23 or b == 0x3B


@numba.njit(cache=True, nogil=True)
def decode_entities(
    data: np.ndarray,
    start: int,
    end: int,
    out: np.ndarray,
    pos: int,
    names: np.ndarray,
    name_offsets: np.ndarray,
    values: np.ndarray,
    value_offsets: np.ndarray,
) -> int:
    """ops.decode_entities (html.unescape on rows with an entity) for rows whose every '&' starts a listed entity
    with its ';' or no reference at all (data[start:end] into out[pos:]; returns the end there), else BAIL."""
    copied = start
    i = find_byte(data, start, end, 0x26)
    while i < end:
        j = i + 1
        if j >= end or _ends_entity_name(data[j]):
            # No reference: "&" before a space, '<', '&', ';', the end, or "&#" without a digit or x after it (a
            # numeric reference, which is left to ops.py).
            if j + 1 < end and data[j] == 0x23 and (_is_digit(data[j + 1]) or data[j + 1] in (0x58, 0x78)):
                return BAIL
            i = find_byte(data, j, end, 0x26)
            continue
        k = j
        while k < end and k - j < 32 and not _ends_entity_name(data[k]):
            k += 1
        found = _find_name(data, j, k, names, name_offsets, False) if k < end and data[k] == 0x3B else -1
        if found < 0:
            return BAIL  # an unlisted name, or one without ';' (html.unescape tries its prefixes)
        pos = copy_bytes(data, copied, i, out, pos)
        pos = copy_bytes(values, value_offsets[found], value_offsets[found + 1], out, pos)
        copied = k + 1
        i = find_byte(data, copied, end, 0x26)
    return copy_bytes(data, copied, end, out, pos)


@numba.njit(nogil=True)
def _is_local(b: int) -> bool:
    # [A-Za-z0-9._%+-]
    return _is_word(b) or b == 0x2E or b == 0x25 or b == 0x2B or b == 0x2D


@numba.njit(nogil=True)
def _is_label(b: int) -> bool:
    # [A-Za-z0-9-]
    return (_is_word(b) and b != 0x5F) or b == 0x2D


@numba.njit(cache=True, nogil=True)
def _email_end(data: np.ndarray, at: int, end: int) -> int:
    """Where the domain of ops._EMAIL_RE after the '@' at `at` ends, or -1: the first label, then as many whole
    labels as the star can take before a last '.' and two or more letters (the greedy star backs off label by
    label, so the last label with two leading letters wins)."""
    u = at + 1
    while u < end and _is_label(data[u]):
        u += 1
    if u == at + 1:
        return -1
    best = -1
    while u < end and data[u] == 0x2E:
        v = u + 1
        while v < end and _is_label(data[v]):
            v += 1
        letters = 0
        while u + 1 + letters < v and _is_letter(data[u + 1 + letters]):
            letters += 1
        if letters >= 2:
            best = u + 1 + letters
        if v == u + 1:
            break  # an empty label ends the star
        u = v
    return best


@numba.njit(cache=True, nogil=True)
def mask_emails(data: np.ndarray, start: int, end: int, out: np.ndarray, pos: int, replacement: np.ndarray) -> int:
    """ops._EMAIL_RE replaced (data[start:end] into out[pos:]; returns the end there). The local part of a match is
    the whole run of its characters before an '@' (after the previous match)."""
    copied = start
    at = find_byte(data, start, end, 0x40)
    while at < end:
        s = at
        while s > copied and _is_local(data[s - 1]):
            s -= 1
        e = _email_end(data, at, end) if s < at else -1
        if e >= 0:
            pos = copy_bytes(data, copied, s, out, pos)
            pos = copy_bytes(replacement, 0, len(replacement), out, pos)
            copied = e
        at = find_byte(data, max(at + 1, e), end, 0x40)
    return copy_bytes(data, copied, end, out, pos)


@numba.njit(nogil=True)
def _digits(data: np.ndarray, i: int, count: int, end: int) -> bool:
    if i + count > end:
        return False
    for k in range(i, i + count):  # noqa: SIM110 (numba compiles the loop; all() over a generator it does not)
        if not _is_digit(data[k]):
            return False
    return True


@numba.njit(nogil=True)
def _is_separator(data: np.ndarray, i: int, end: int) -> bool:
    # [ .-]
    return i < end and (data[i] == 0x20 or data[i] == 0x2E or data[i] == 0x2D)


@numba.njit(nogil=True)
def _phone_ends(data: np.ndarray, e: int, end: int) -> bool:
    # ($|[^0-9A-Za-z_])
    return e == end or not _is_word(data[e])


@numba.njit(cache=True, nogil=True)
def _phone_number(data: np.ndarray, k: int, end: int) -> int:
    """[0-9]{3,4}[ .-]?[0-9]{3,4} then the end of ops._PHONE_RE from k: where the number ends, or -1."""
    for first in (4, 3):
        if not _digits(data, k, first, end):
            continue
        j = k + first
        for separated in (1, 0):
            if separated and not _is_separator(data, j, end):
                continue
            for last in (4, 3):
                e = j + separated + last
                if _digits(data, j + separated, last, end) and _phone_ends(data, e, end):
                    return e
    return -1


@numba.njit(cache=True, nogil=True)
def _phone_after_country(data: np.ndarray, j: int, end: int) -> int:
    """(?:\\([0-9]{2,4}\\)[ .-]?|[0-9]{2,4}[ .-]) and the rest of the number from j: its end, or -1."""
    if j < end and data[j] == 0x28:
        for area in (4, 3, 2):
            k = j + 1 + area
            if not (_digits(data, j + 1, area, end) and k < end and data[k] == 0x29):
                continue
            for separated in (1, 0):
                if separated and not _is_separator(data, k + 1, end):
                    continue
                e = _phone_number(data, k + 1 + separated, end)
                if e >= 0:
                    return e
    for area in (4, 3, 2):
        if _digits(data, j, area, end) and _is_separator(data, j + area, end):
            e = _phone_number(data, j + area + 1, end)
            if e >= 0:
                return e
    return -1


@numba.njit(cache=True, nogil=True)
def _phone_end(data: np.ndarray, q: int, end: int) -> int:
    """Where the number of ops._PHONE_RE starting at q ends (its group 2), or -1; its alternatives in RE2's order."""
    plus = data[q] == 0x2B
    if plus:
        for country in (3, 2, 1):
            j = q + 1 + country
            if not _digits(data, q + 1, country, end):
                continue
            for separated in (1, 0):
                if separated and not _is_separator(data, j, end):
                    continue
                e = _phone_after_country(data, j + separated, end)
                if e >= 0:
                    return e
    e = _phone_after_country(data, q, end)
    if e >= 0 or not plus:
        return e
    for count in range(15, 8, -1):
        e = q + 1 + count
        if _digits(data, q + 1, count, end) and _phone_ends(data, e, end):
            return e
    return -1


@numba.njit(nogil=True)
def _char_start(data: np.ndarray, i: int) -> int:
    """The start of the character whose last byte is data[i] (the rows here hold characters of two bytes at most)."""
    return i - 1 if data[i] >= 0x80 else i


@numba.njit(cache=True, nogil=True)
def mask_phones(data: np.ndarray, start: int, end: int, out: np.ndarray, pos: int, replacement: np.ndarray) -> int:
    """ops._PHONE_RE replaced, its first and third groups kept (data[start:end] into out[pos:]; returns the end
    there). The character before a number (group 1) and after it (group 3) belong to the match: the next match
    starts after both."""
    copied = start
    resume = start  # where the next match may start
    q = _next_number(data, start, end)
    while q < end:
        if q == start:
            allowed = resume == start  # ^ holds at the start of the text only
        else:
            before = data[q - 1]
            allowed = not (_is_word(before) or before == 0x2B) and _char_start(data, q - 1) >= resume
        e = _phone_end(data, q, end) if allowed else -1
        if e >= 0:
            pos = copy_bytes(data, copied, q, out, pos)
            pos = copy_bytes(replacement, 0, len(replacement), out, pos)
            copied = e
            resume = e if e == end else e + (2 if data[e] >= 0x80 else 1)
        q = _next_number(data, max(q + 1, e), end)
    return copy_bytes(data, copied, end, out, pos)


@numba.njit(cache=True, nogil=True)
def ip_like(data: np.ndarray, start: int, end: int) -> bool:
    """Whether ops._IPV4_RE or ops._IPV6_RE could match (a superset): a digit, a dot and a digit in a row; "::"; or
    seven colons."""
    colons = 0
    i = skip_to(data, start, end, 0x2E, 0x3A)
    while i < end:
        b = data[i]
        if b == 0x3A:
            colons += 1
            if i + 1 < end and data[i + 1] == 0x3A:
                return True
        elif b == 0x2E and i > start and i + 1 < end and _is_digit(data[i - 1]) and _is_digit(data[i + 1]):
            return True
        i = skip_to(data, i + 1, end, 0x2E, 0x3A)
    return colons >= 7
