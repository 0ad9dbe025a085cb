"""The row-local cleaning operations: pure functions from an Arrow table to an Arrow table, vectorised with
pyarrow.compute (RE2 regular expressions, utf8proc normalisation) so no Python runs per row.

A missing text (null) stays null through the transforms; filters measure it as the empty string. Every function
keeps the other columns of the rows it keeps, in order.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kubeforge.api.common import ApiModel
from kubeforge.api.datapipeline import (
    LabelParams,
    LabelRule,
    LengthFilterParams,
    PiiMaskParams,
    QualityFilterParams,
    ScriptFilterParams,
    UnicodeParams,
)

from .columns import LABEL, TEXT
from .kernels.textclasses import COLLAPSE_SPACES, NOT_WHITESPACE, WHITESPACE
from .kernels.textscan import (
    Utf8Bytes,
    byte_class,
    byte_set_table,
    control_or_non_ascii,
    count_in_rows,
    non_ascii_chars,
    non_ascii_rows,
    on_rows,
    rows_with,
    rows_with_byte,
    sequence_hits,
    squeeze_spaces,
    utf8_bytes,
)

# Tags that end a block of text: replaced by a line break so words on either side stay apart.
BLOCK_TAGS = (
    "address|article|aside|blockquote|br|dd|div|dl|dt|figcaption|figure|footer|form|h[1-6]|header|hr|li|main|nav|"
    "ol|p|pre|section|table|td|th|tr|ul"
)
_SCRIPT_STYLE_RE = r"(?is)<(?:script|style|noscript)\b[^>]*>.*?</(?:script|style|noscript)\s*>"
_COMMENT_RE = r"(?s)<!--.*?-->"
_BLOCK_TAG_RE = rf"(?i)</?(?:{BLOCK_TAGS})\b[^<>]*>"
# A tag starts with a letter, '/', '!' or '?', so "a < b" in plain text survives.
_TAG_RE = r"<[A-Za-z/!?][^<>]*>"
_ENTITY_RE = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"

_EMAIL_RE = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = rf"(^|[^0-9A-Za-z.])((?:{_OCTET}\.){{3}}{_OCTET})($|[^0-9A-Za-z.]|\.[^0-9])"
_H = "[0-9A-Fa-f]{1,4}"
_IPV6_RE = rf"(^|[^0-9A-Za-z:.])((?:{_H}:){{7}}{_H}|(?:{_H}(?::{_H}){{0,5}})?::{_H}(?::{_H}){{0,5}})($|[^0-9A-Za-z:])"
_PHONE_RE = (
    r"(^|[^0-9A-Za-z+_])((?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{2,4}\)[ .-]?|[0-9]{2,4}[ .-])[0-9]{3,4}[ .-]?[0-9]{3,4}"
    r"|\+[0-9]{9,15})($|[^0-9A-Za-z_])"
)

SCRIPT_CLASSES: dict[str, str] = {
    "latin": r"\p{Latin}",
    "cyrillic": r"\p{Cyrillic}",
    "greek": r"\p{Greek}",
    "arabic": r"\p{Arabic}",
    "hebrew": r"\p{Hebrew}",
    "cjk": r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}",
    "devanagari": r"\p{Devanagari}",
}


def text_of(table: pa.Table) -> pa.ChunkedArray:
    """The text column."""
    return table.column(TEXT)


def with_text(table: pa.Table, text: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The table with its text column replaced."""
    return table.set_column(table.schema.get_field_index(TEXT), TEXT, text)


def keep_rows(table: pa.Table, keep: pa.ChunkedArray | pa.Array | np.ndarray) -> pa.Table:
    """The rows where keep is true (null counts as false)."""
    if not isinstance(keep, np.ndarray):
        keep = pc.fill_null(keep, False)
    return table.filter(keep)


def filled_text(table: pa.Table) -> pa.ChunkedArray:
    """The text with missing values read as the empty string (what filters measure)."""
    return pc.fill_null(text_of(table), "")


def _combined(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def contains(text: pa.ChunkedArray | pa.Array, literal: str) -> np.ndarray:
    """Which rows contain a literal (null rows do not); one ASCII character is a byte scan, ten times cheaper than
    pyarrow's per-row substring search."""
    if len(literal) == 1 and ord(literal) < 0x80:
        return rows_with_byte(utf8_bytes(text), ord(literal))
    return pc.fill_null(pc.match_substring(text, literal), False).to_numpy(zero_copy_only=False)


# ASCII byte classes: counting characters with a table lookup on the UTF-8 bytes is far cheaper than a regex with one
# match per character; rows with other characters are counted with Unicode-aware regular expressions instead.
_ASCII_ALNUM = np.zeros(256, dtype=np.uint8)
_ASCII_ALNUM[[*range(48, 58), *range(65, 91), *range(97, 123)]] = 1
_ASCII_ALPHA = np.zeros(256, dtype=np.uint8)
_ASCII_ALPHA[[*range(65, 91), *range(97, 123)]] = 1
_ASCII_SPACE = np.zeros(256, dtype=np.uint8)
_ASCII_SPACE[[9, 10, 11, 12, 13, 32]] = 1


def ascii_class_counts(text: pa.Array, table: np.ndarray) -> np.ndarray:
    """Per row, how many bytes fall in the class `table` marks (exact character counts for ASCII rows)."""
    view = utf8_bytes(text)
    return count_in_rows(view, byte_class(view.data, table))


def _class_counts(
    text: pa.Array,
    table: np.ndarray,
    unicode_class: str,
    view: Utf8Bytes | None = None,
    other: np.ndarray | None = None,
) -> np.ndarray:
    """Per row, characters of a class: byte counts for ASCII rows, removing the complement by regex for others
    (view and other, the indices of the non-ASCII rows, may be passed in when already computed)."""
    text = _combined(pc.fill_null(text, ""))
    view = utf8_bytes(text) if view is None else view
    counts = count_in_rows(view, byte_class(view.data, table))
    other = np.flatnonzero(non_ascii_rows(view)) if other is None else other
    if len(other):
        # The byte counts already hold the ASCII characters of the class; add the non-ASCII ones, classified by a
        # regex on those characters alone (a few percent of these rows' bytes, typically).
        rows = non_ascii_chars(text.take(pa.array(other)))
        kept = pc.replace_substring_regex(rows, f"[^{unicode_class}]+", "")
        counts[other] += pc.utf8_length(kept).to_numpy()
    return counts


def char_lengths(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Characters per row (0 for null): the byte length for ASCII rows, utf8_length for the others only."""
    view = utf8_bytes(text)
    return _char_lengths(_combined(text), view, np.flatnonzero(non_ascii_rows(view)))


def _char_lengths(text: pa.Array, view: Utf8Bytes, other: np.ndarray) -> np.ndarray:
    lengths = np.where(view.valid, view.ends - view.starts, 0)
    if len(other):
        lengths[other] = pc.utf8_length(text.take(pa.array(other))).to_numpy()
    return lengths


def drop_empty(table: pa.Table, params: ApiModel | None = None) -> pa.Table:
    """Drop rows whose text is missing or only whitespace."""
    text = text_of(table)
    has_content = pc.match_substring_regex(text, NOT_WHITESPACE)
    return keep_rows(table, has_content)


def strip_html(table: pa.Table, params: ApiModel | None = None) -> pa.Table:
    """Remove scripts, styles, comments and tags (block tags become line breaks) and decode HTML entities."""
    text = text_of(table)

    def strip_tags(rows: pa.Array) -> pa.Array:
        rows = pc.replace_substring_regex(rows, _SCRIPT_STYLE_RE, " ")
        rows = pc.replace_substring_regex(rows, _COMMENT_RE, "")
        rows = pc.replace_substring_regex(rows, _BLOCK_TAG_RE, "\n")
        return pc.replace_substring_regex(rows, _TAG_RE, "")

    text = on_rows(text, contains(text, "<"), strip_tags)
    return with_text(table, on_rows(text, contains(text, "&"), decode_entities))


def decode_entities(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Decode HTML entities; only the rows that contain one go through Python's html.unescape."""
    has_entity = pc.fill_null(pc.match_substring_regex(text, _ENTITY_RE), False)
    if not pc.any(has_entity).as_py():
        return text
    combined = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    rows = np.flatnonzero(has_entity.to_numpy(zero_copy_only=False))
    values = combined.to_pylist()
    for i in rows:
        values[i] = html.unescape(values[i])
    return pa.chunked_array([pa.array(values, type=combined.type)])


def normalize_unicode(table: pa.Table, params: UnicodeParams) -> pa.Table:
    """Unicode normalisation (NFKC by default)."""
    text = text_of(table)
    # ASCII text is the same in every normalisation form, and so is text whose other characters all are.
    view = utf8_bytes(text)
    changes = rows_with(view, may_normalize(view.data, params.form))
    return with_text(table, on_rows(text, changes, lambda rows: pc.utf8_normalize(rows, form=params.form)))


@functools.cache
def stable_two_byte(form: str) -> np.ndarray:
    """Per code point below U+0800 (the two-byte UTF-8 ones), whether it is normalised in form on its own, for both
    Python's tables and pyarrow's (utf8proc, whose Unicode version differs), and an assigned starter (combining
    class 0): then a string of such characters and ASCII is normalised too. The characters that compose with the
    starter before them (quick check Maybe) all lie above U+0800 or have a non-zero combining class."""
    chars = [chr(code) for code in range(0x800)]
    by_pyarrow = pc.equal(pc.utf8_normalize(pa.array(chars), form=form), pa.array(chars)).to_numpy(zero_copy_only=False)
    by_python = np.array(
        [
            unicodedata.category(c) != "Cn" and unicodedata.combining(c) == 0 and unicodedata.is_normalized(form, c)
            for c in chars
        ]
    )
    return by_pyarrow & by_python


def may_normalize(data: np.ndarray, form: str) -> np.ndarray:
    """Per byte, whether it starts a character that normalisation could change (a superset): a two-byte character
    outside stable_two_byte, or any longer one."""
    lead = data >= np.uint8(0xC0)
    marks = data >= np.uint8(0xE0)
    two = np.flatnonzero(lead & ~marks)
    two = two[two + 1 < len(data)]
    code = ((data[two].astype(np.int64) & 0x1F) << 6) | (data[two + 1].astype(np.int64) & 0x3F)
    marks[two] = ~stable_two_byte(form)[code]
    return marks


def collapse_whitespace(table: pa.Table, params: ApiModel | None = None) -> pa.Table:
    """Collapse runs of spaces to one space and runs of blank lines to one blank line; trim the ends."""
    text = text_of(table)
    text = on_rows(text, contains(text, "\r"), lambda rows: pc.replace_substring_regex(rows, r"\r\n?", "\n"))
    # Squeezing runs of plain spaces first leaves every run of spaces a run, so the regex on the rows that need it
    # gives the same text as the regex on every row.
    text = squeeze_spaces(text)
    text = on_rows(text, may_collapse_spaces(text), lambda rows: pc.replace_substring_regex(rows, COLLAPSE_SPACES, " "))

    def lines(rows: pa.Array) -> pa.Array:
        rows = pc.replace_substring_regex(rows, r" ?\n ?", "\n")
        return pc.replace_substring_regex(rows, r"\n{3,}", "\n\n")

    text = on_rows(text, contains(text, "\n"), lines)
    return with_text(table, pc.utf8_trim_whitespace(text))


def may_collapse_spaces(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows COLLAPSE_SPACES could still change once plain-space runs are squeezed (a superset): those with an ASCII
    control character other than the line break (tab, vertical tab, form feed, carriage return are among them) or
    any non-ASCII character (the Unicode spaces all are)."""
    view = utf8_bytes(text)
    hits = control_or_non_ascii(view.data)
    hits &= view.data != np.uint8(0x0A)
    return rows_with(view, hits)


def word_counts(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Whitespace-separated words per document."""
    return pc.count_substring_regex(text, NOT_WHITESPACE + "+").to_numpy()


def length_filter(table: pa.Table, params: LengthFilterParams) -> pa.Table:
    """Keep documents whose character and word counts are within the bounds."""
    text = filled_text(table)
    return table.filter(length_keep(params, table.num_rows, lambda: char_lengths(text), lambda: word_counts(text)))


def length_keep(
    params: LengthFilterParams, rows: int, chars: Callable[[], np.ndarray], words: Callable[[], np.ndarray]
) -> np.ndarray:
    """Which of the rows lengthFilter keeps, given their character and word counts (computed only when bounded)."""
    keep = np.ones(rows, dtype=bool)
    if counts_chars(params):
        keep &= _in_bounds(chars(), params.min_chars, params.max_chars)
    if params.min_words is not None or params.max_words is not None:
        keep &= _in_bounds(words(), params.min_words, params.max_words)
    return keep


def counts_chars(params: LengthFilterParams) -> bool:
    """Whether lengthFilter tests characters (a count collapsing whitespace changes; word counts it does not)."""
    return params.min_chars is not None or params.max_chars is not None


def _in_bounds(values: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    keep = np.ones(len(values), dtype=bool)
    if low is not None:
        keep &= values >= low
    if high is not None:
        keep &= values <= high
    return keep


def alnum_ratio(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Share of letters and digits among the non-space characters of each document (0 for none)."""
    text = _combined(pc.fill_null(text, ""))
    # The byte view and the non-ASCII rows serve all three counts.
    view = utf8_bytes(text)
    other = np.flatnonzero(non_ascii_rows(view))
    alnum = _class_counts(text, _ASCII_ALNUM, r"\p{L}\p{N}", view, other)
    spaces = _class_counts(text, _ASCII_SPACE, WHITESPACE[1:-1], view, other)
    return share(alnum, _char_lengths(text, view, other) - spaces)


def share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole as floats, 0 where whole is 0."""
    return np.divide(np.asarray(part, dtype=np.float64), whole, out=np.zeros(len(part)), where=whole > 0)


def repeated_line_ratio(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Share of the non-blank lines of each document that repeat an earlier line of it (0 for none)."""
    text = _combined(pc.fill_null(text, ""))
    ratio = np.zeros(len(text))
    multi_line = np.flatnonzero(contains(text, "\n"))
    if len(multi_line):
        ratio[multi_line] = _repeated_line_ratio(text.take(pa.array(multi_line)))
    return ratio


def _repeated_line_ratio(text: pa.Array) -> np.ndarray:
    n = len(text)
    lines = pc.split_pattern(text, "\n")
    doc = pc.list_parent_indices(lines)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lines))
    nonblank = pc.not_equal(flat, "")
    pairs = pa.table({"doc": doc.filter(nonblank), "line": flat.filter(nonblank)})
    total = np.bincount(pairs.column("doc").to_numpy(), minlength=n).astype(np.float64)
    groups = pairs.group_by(["doc", "line"]).aggregate([("line", "count")])
    repeats = np.bincount(
        groups.column("doc").to_numpy(),
        weights=groups.column("line_count").to_numpy() - 1,
        minlength=n,
    )
    return share(repeats, total)


def quality_filter(table: pa.Table, params: QualityFilterParams) -> pa.Table:
    """Keep documents with enough letters and digits and few repeated lines."""
    text = filled_text(table)
    return table.filter(
        quality_keep(params, table.num_rows, lambda: alnum_ratio(text), lambda: repeated_line_ratio(text))
    )


def quality_keep(
    params: QualityFilterParams,
    rows: int,
    alnum: Callable[[], np.ndarray],
    repeated_lines: Callable[[], np.ndarray],
) -> np.ndarray:
    """Which of the rows qualityFilter keeps, given their ratios (computed only when tested)."""
    keep = np.ones(rows, dtype=bool)
    if params.min_alnum_ratio > 0:
        keep &= alnum() >= params.min_alnum_ratio
    if counts_lines(params):
        keep &= repeated_lines() <= params.max_repeated_line_ratio
    return keep


def counts_lines(params: QualityFilterParams) -> bool:
    """Whether qualityFilter tests repeated lines (a ratio collapsing whitespace can change)."""
    return params.max_repeated_line_ratio < 1


def script_ratio(text: pa.ChunkedArray | pa.Array, scripts: list[str]) -> np.ndarray:
    """Share of the letters of each document that belong to the given scripts (0 for a document without letters)."""
    allowed_class = "".join(SCRIPT_CLASSES[s] for s in scripts)
    letters = _class_counts(text, _ASCII_ALPHA, r"\p{L}")
    if "latin" in scripts:  # ASCII letters are Latin
        allowed = _class_counts(text, _ASCII_ALPHA, allowed_class)
    else:
        allowed = _class_counts(text, np.zeros(256, dtype=np.uint8), allowed_class)
    return share(allowed, letters)


def script_filter(table: pa.Table, params: ScriptFilterParams) -> pa.Table:
    """Keep documents whose letters are mostly in the allowed scripts."""
    return table.filter(script_ratio(filled_text(table), list(params.scripts)) >= params.min_ratio)


def replacement_text(replacement: str, kind: str) -> str:
    """The text maskPii puts in place of a match of kind (EMAIL, PHONE or IP)."""
    return replacement.replace("{kind}", kind)


def _rewrite(replacement: str, kind: str) -> str:
    """An RE2 rewrite string inserting the replacement for kind (backslashes escaped)."""
    return replacement_text(replacement, kind).replace("\\", "\\\\")


_DIGIT = byte_set_table(b"0123456789")


def may_have_ipv4(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows _IPV4_RE could match (a superset): every match has an ASCII digit, a dot and a digit in a row. RE2 has no
    literal to search for in that pattern and tries it at every position, so skipping rows pays."""
    view = utf8_bytes(text)
    return _ipv4_rows(view, byte_class(view.data, _DIGIT))


def may_have_phone(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows _PHONE_RE could match (a superset): both of its forms have at least three ASCII digits in a row."""
    view = utf8_bytes(text)
    return _phone_rows(view, byte_class(view.data, _DIGIT))


def _ipv4_rows(view: Utf8Bytes, digits: np.ndarray) -> np.ndarray:
    return rows_with(view, sequence_hits([digits, view.data == ord("."), digits]))


_PHONE_SEPARATOR = byte_set_table(b" .-")


def _phone_rows(view: Utf8Bytes, digits: np.ndarray) -> np.ndarray:
    # Both forms hold three digits, at most one separator, three digits ([0-9]{3,4}[ .-]?[0-9]{3,4}, or nine digits).
    separator = byte_class(view.data, _PHONE_SEPARATOR)
    six = sequence_hits([digits] * 6)
    six |= sequence_hits([digits, digits, digits, separator, digits, digits, digits])
    return rows_with(view, six)


def _could_match(
    text: pa.Array, view: Utf8Bytes, digits: np.ndarray, touched: np.ndarray, prefilter: Callable
) -> np.ndarray:
    """The rows a digit prefilter passes: on the input bytes for untouched rows, on the current text of the rows an
    earlier replacement went through."""
    rows = prefilter(view, digits) & ~touched
    if touched.any():
        current = utf8_bytes(text.filter(pa.array(touched)))
        rows[touched] = prefilter(current, byte_class(current.data, _DIGIT))
    return rows


def mask_pii(table: pa.Table, params: PiiMaskParams) -> pa.Table:
    """Replace e-mail addresses, IP addresses and phone numbers (in that order) by the replacement text."""
    text = _combined(text_of(table))
    # The digit prefilters are computed once on the input: a row no earlier replacement went through still has its
    # input bytes; the others are scanned again.
    view = utf8_bytes(text)
    digits = byte_class(view.data, _DIGIT)
    touched = np.zeros(len(text), dtype=bool)
    if params.emails:
        email = _rewrite(params.replacement, "EMAIL")
        rows = contains(text, "@")
        text = on_rows(text, rows, lambda rows: pc.replace_substring_regex(rows, _EMAIL_RE, email))
        touched |= rows
    if params.ip_addresses:
        ip = r"\1" + _rewrite(params.replacement, "IP") + r"\3"
        rows = _could_match(text, view, digits, touched, _ipv4_rows)
        text = on_rows(text, rows, lambda rows: pc.replace_substring_regex(rows, _IPV4_RE, ip))
        touched |= rows
        rows = contains(text, ":")
        text = on_rows(text, rows, lambda rows: pc.replace_substring_regex(rows, _IPV6_RE, ip))
        touched |= rows
    if params.phone_numbers:
        phone = r"\1" + _rewrite(params.replacement, "PHONE") + r"\3"
        rows = _could_match(text, view, digits, touched, _phone_rows)
        text = on_rows(text, rows, lambda rows: pc.replace_substring_regex(rows, _PHONE_RE, phone))
    return with_text(table, text)


def rule_regex(rule: LabelRule) -> str:
    """The RE2 expression of a label rule: its pattern, or any of its keywords as whole words, case-insensitive."""
    if rule.pattern:
        return rule.pattern
    words = "|".join(re.escape(k) for k in rule.keywords)
    return rf"(?i)(?:^|[^\p{{L}}\p{{N}}_])(?:{words})(?:$|[^\p{{L}}\p{{N}}_])"


def label_rows(table: pa.Table, params: LabelParams) -> pa.Table:
    """Label documents by the first matching rule; keep existing labels unless overwrite; drop the unlabelled
    unless a default is set."""
    n = table.num_rows
    labels = table.column(LABEL).combine_chunks() if LABEL in table.column_names else pa.nulls(n, pa.string())
    open_rows = np.ones(n, dtype=bool) if params.overwrite else labels.is_null().to_numpy(zero_copy_only=False)
    assigned = np.zeros(n, dtype=bool)
    text = filled_text(table)
    for rule in params.rules:
        todo = open_rows & ~assigned
        if not todo.any():
            break
        matched = pc.match_substring_regex(text, rule_regex(rule)).to_numpy(zero_copy_only=False) & todo
        labels = pc.if_else(matched, pa.scalar(rule.label, pa.string()), labels)
        assigned |= matched
    if params.overwrite:
        labels = pc.if_else(assigned, labels, pa.scalar(None, pa.string()))
    if params.default is not None:
        labels = pc.fill_null(labels, params.default)
    if LABEL in table.column_names:
        table = table.set_column(table.schema.get_field_index(LABEL), LABEL, labels)
    else:
        table = table.append_column(LABEL, labels)
    return table.filter(pc.is_valid(table.column(LABEL)))


def check_regex(pattern: str) -> str | None:
    """None when pattern is a valid RE2 expression, else the reason it is not."""
    try:
        pc.match_substring_regex(pa.array([""]), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return str(exc).split("\n")[0]
    return None


LocalOperation = Callable[[pa.Table, ApiModel], pa.Table]

LOCAL_OPERATIONS: dict[str, LocalOperation] = {
    "dropEmpty": drop_empty,
    "stripHtml": strip_html,
    "normalizeUnicode": normalize_unicode,
    "collapseWhitespace": collapse_whitespace,
    "lengthFilter": length_filter,
    "qualityFilter": quality_filter,
    "scriptFilter": script_filter,
    "maskPii": mask_pii,
    "label": label_rows,
}
"""camelCase operation name -> function; the others (exactDedup, nearDedup, outlierFilter) need the whole dataset."""

GLOBAL_OPERATIONS = ("exactDedup", "nearDedup", "outlierFilter")
