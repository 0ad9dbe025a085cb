"""The byte scans the cleaning operations use as prefilters: exact where they claim to be, supersets of the regex
matches where they prefilter, and the squeeze equal to the regex it replaces."""

from __future__ import annotations

import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kubeforge_trainer.data import hashing, ops
from kubeforge_trainer.data.kernels import textscan
from kubeforge_trainer.data.kernels.textclasses import COLLAPSE_ANY_WHITESPACE, COLLAPSE_SPACES

ROWS = [
    "",
    None,
    "plain",
    "a  b   c",
    "  lead",
    "trail  ",
    " ",
    "x<y",
    "<",
    "tab\there",
    "line\nbreak",
    "cr\r\n",
    "nbsp\u00a0here",
    "ideo\u3000space",
    "é  ü",
    "1.2.3.4",
    "ip 10.0.0.1.",
    "(10.0.0.1)",
    "call 555-1234",
    "555 123 4567",
    "+14155550123",
    "٣٣٣ arabic digits",
    "１２３ fullwidth",
    "12",
    "1.a",
    "e-mail a@b.cc",
]


def _array(rows: list[str | None]) -> pa.Array:
    return pa.array(rows, pa.string())


def _random_rows(count: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    alphabet = "ab1 2.\n\t<&@:-+()\u00a0é٣"
    return [
        None if rng.random() < 0.05 else "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        for _ in range(count)
    ]


@pytest.mark.parametrize("sliced", [False, True])
def test_contains_single_byte_matches_pyarrow(sliced: bool) -> None:
    rows = ROWS + _random_rows(500, 1)
    text = _array(rows)
    if sliced:
        text = text.slice(3, len(rows) - 5)
    for literal in "<&@:\n\r ":
        expected = pc.fill_null(pc.match_substring(text, literal), False).to_numpy(zero_copy_only=False)
        assert ops.contains(text, literal).tolist() == expected.tolist(), literal
    chunked = pa.chunked_array([_array(rows[:7]), _array(rows[7:])])
    assert ops.contains(chunked, "<").tolist() == [r is not None and "<" in r for r in rows]


def test_non_ascii_rows_and_char_lengths() -> None:
    text = _array(ROWS)
    view = textscan.utf8_bytes(text)
    assert textscan.non_ascii_rows(view).tolist() == [r is not None and not r.isascii() for r in ROWS]
    assert ops.char_lengths(text).tolist() == [len(r) if r is not None else 0 for r in ROWS]
    assert ops.char_lengths(text.slice(5)).tolist() == [len(r) if r is not None else 0 for r in ROWS[5:]]


def test_empty_and_all_empty_arrays() -> None:
    for text in (_array([]), _array(["", ""]), _array([None]), _array(["", "", "ab"]).slice(0, 2)):
        view = textscan.utf8_bytes(text)
        assert textscan.rows_with_byte(view, ord("a")).tolist() == [False] * len(text)
        assert textscan.count_in_rows(view, view.data == ord("a")).tolist() == [0] * len(text)
        assert textscan.squeeze_spaces(text).to_pylist() == text.to_pylist()


def test_count_in_rows_matches_python_on_random_rows() -> None:
    rows = _random_rows(2000, 2)
    for text in (_array(rows), _array(rows).slice(17, 1500)):
        view = textscan.utf8_bytes(text)
        counts = textscan.count_in_rows(view, view.data == ord("a"))
        assert counts.tolist() == [0 if r is None else r.count("a") for r in text.to_pylist()]


def test_byte_class_matches_table_lookup() -> None:
    data = np.arange(256, dtype=np.uint8).repeat(3)
    for table in (
        ops._ASCII_ALNUM,
        ops._ASCII_SPACE,
        textscan.byte_set_table(b"\t\x0b\x0c\r" + bytes(range(0x80, 0x100))),
        ops._DIGIT,
        np.zeros(256, np.uint8),
    ):
        assert textscan.byte_class(data, table).tolist() == (table[data] != 0).tolist()


@pytest.mark.parametrize(
    ("regex", "prefilter"),
    [
        (ops._IPV4_RE, ops.may_have_ipv4),
        (ops._PHONE_RE, ops.may_have_phone),
    ],
)
def test_pii_prefilters_never_skip_a_matching_row(regex: str, prefilter) -> None:
    rng = random.Random(3)
    pieces = ["1", "12", "123", "255", "4567", "1234", ".", "-", " ", "  ", "(", ")", "+", "a", "٣", "１", ",", "\n"]
    rows = ROWS + ["".join(rng.choice(pieces) for _ in range(rng.randrange(14))) for _ in range(3000)]
    text = _array(rows)
    could = prefilter(text)
    matches = pc.fill_null(pc.match_substring_regex(text, regex), False).to_numpy(zero_copy_only=False)
    assert matches.any()
    assert not (matches & ~could).any(), [r for r, m, c in zip(rows, matches, could, strict=True) if m and not c]
    # Phone numbers and addresses at the very start and end of a row, next to punctuation.
    edge = _array(
        ["555-1234", "x 555-1234", "(555) 123-4567", "10.0.0.1", "a,10.0.0.1!", "+123456789", "1234.5678", "123 4567"]
    )
    edge_matches = pc.match_substring_regex(edge, regex).to_numpy(zero_copy_only=False)
    assert not (edge_matches & ~prefilter(edge)).any()


def test_unicode_digits_do_not_match_the_ascii_regexes() -> None:
    text = _array(["٣٣٣-٣٣٣٣", "１２３-４５６７", "١٠.٠.٠.١"])
    assert not pc.any(pc.match_substring_regex(text, ops._PHONE_RE)).as_py()
    assert not ops.may_have_phone(text).any()
    assert not ops.may_have_ipv4(text).any()


def test_squeeze_then_prefiltered_regex_equals_the_regex_everywhere() -> None:
    rows = ROWS + _random_rows(3000, 4) + ["a" + " " * k + "b" for k in range(6)]
    text = _array(rows)
    squeezed = textscan.squeeze_spaces(text)
    assert squeezed.to_pylist() == [None if r is None else re.sub(" {2,}", " ", r) for r in rows]
    expected = pc.replace_substring_regex(text, COLLAPSE_SPACES, " ")
    got = textscan.on_rows(
        squeezed, ops.may_collapse_spaces(squeezed), lambda r: pc.replace_substring_regex(r, COLLAPSE_SPACES, " ")
    )
    assert got.to_pylist() == expected.to_pylist()
    assert textscan.squeeze_spaces(text.slice(4, 30)).to_pylist() == squeezed.slice(4, 30).to_pylist()


def test_normalized_text_equals_the_plain_definition() -> None:
    rows = ROWS + _random_rows(3000, 5) + ["ÉCOLE  Ünïcode\u00a0\u00a0X", "MIXED Case  ß"]
    text = _array(rows)
    plain = pc.utf8_trim_whitespace(
        pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(text, "")), COLLAPSE_ANY_WHITESPACE, " ")
    )
    assert hashing.normalized_text(text).to_pylist() == plain.to_pylist()


def test_non_ascii_chars_keeps_whole_characters_and_nulls() -> None:
    rows = ["a©b", None, "", "plain", "日本 語x", "é"]
    for text in (_array(rows), _array(rows).slice(1)):
        expected = [None if r is None else "".join(c for c in r if not c.isascii()) for r in text.to_pylist()]
        got = textscan.non_ascii_chars(text)
        got.validate(full=True)
        assert got.to_pylist() == expected


def test_class_counts_on_mixed_rows_match_python() -> None:
    rows = ["a©b 1", "日本 語x\u3000y", "é\u00a0ü 2", "", "ab!!", "٣ \t x"]
    text = _array(rows)
    alnum = ops._class_counts(text, ops._ASCII_ALNUM, r"\p{L}\p{N}").tolist()
    assert alnum == [sum(c.isalnum() for c in r) for r in rows]
    spaces = ops._class_counts(text, ops._ASCII_SPACE, ops.WHITESPACE[1:-1]).tolist()
    assert spaces == [sum(c.isspace() for c in r) for r in rows]


def test_control_or_non_ascii_marks_exactly_those_bytes() -> None:
    data = np.arange(256, dtype=np.uint8)
    assert textscan.control_or_non_ascii(data).tolist() == [b < 0x20 or b >= 0x80 for b in range(256)]


def test_squeeze_rebuilds_only_rows_with_runs_and_keeps_nulls() -> None:
    rows = [None, "a  b", "ab", "", "  ", " x ", None, "é   ü"]
    text = _array(rows)
    squeezed = textscan.squeeze_spaces(text)
    squeezed.validate(full=True)
    assert squeezed.to_pylist() == [None if r is None else re.sub(" {2,}", " ", r) for r in rows]


def test_row_slices_cover_every_row_once_within_the_byte_budget() -> None:
    texts = pa.array(["aaaa", "bb", "", "cccccccccc", "d", "ee", None, "ff"]).slice(1)  # an offset array too
    view = textscan.utf8_bytes(texts)
    slices = textscan.row_slices(view, 4)
    # "bb" "" | the row longer than the budget, alone | "d" "ee" None (3 bytes; "ff" would make 5) | "ff"
    assert slices == [(0, 2), (2, 3), (3, 6), (6, 7)]
    assert textscan.row_slices(textscan.utf8_bytes(pa.array([], pa.string())), 4) == []
