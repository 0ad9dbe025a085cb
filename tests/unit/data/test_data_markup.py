"""The compiled HTML and PII rewrites (textmarkup) give exactly what the RE2 expressions of ops.py give under
pyarrow's replace-all, and html.unescape's decoding, on random strings built from the pieces they react to."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kubeforge_trainer.data import ops
from kubeforge_trainer.data.kernels import textmarkup

PIECES = {
    "html": [
        *["<p>", "</P>", "<br/>", "<Div class='x'>", "<a href=x>", "</a>", "<", ">", "<h1>", "<H7>", "<thead>"],
        *["<p", "p>", "< p>", "<_p>", "</>", "<?x?>", "<!x>", "<1>", "<a <p>>", "<li x='<'>", "<pre>", "</tr>"],
        *["a", "b c", " ", "\n", "&", "pre", "<table border=1>", "<styles>", "<BR>"],
    ],
    "entities": [
        *["&amp;", "&lt;", "&copy;", "&nbsp;", "&eacute;", "&commat;", "&amp", "&#39;", "&#x27;", "&#a", "&#"],
        *["& ", "&;", "&&", "AT&T", "&unknownthing;", "&Amp;", "&AMP;", "&reg;", "&hellip;", "&deg;", "x", " "],
        *["&" + "a" * 33 + ";", "&frac12;", "&quot;", "&apos;", "&lpar;", "&\t", "&\n", "&<", "&shy;"],
    ],
    "emails": [
        *["a", "b", "@", ".", "-", "_", "%", "+", "com", "io", "x1", "1", " ", "..", "A", "ex-ample", "@@", "a.b"],
        *["c", "\u00e9", "<EMAIL>", "@", ".com", ".io", "a.b@c.de", "@x.co", ".1a", "-x."],
    ],
    "phones": [
        *["1", "23", "456", "7890", "+", "(", ")", " ", ".", "-", "x", "_", "+1", "555", "123", "4567", "(555)"],
        *["\u00a9", "\n", "a", "12345678901", "555 123 4567", "+1 555-123-4567", "(555) 123-4567", " 55.123.4567"],
    ],
}


def rewritten(rewrite: Callable, text: str, *args: object) -> str | None:
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    out = np.empty(8 * len(data) + 64, dtype=np.uint8)
    end = rewrite(data, 0, len(data), out, 0, *args)
    return None if end == textmarkup.BAIL else out[:end].tobytes().decode()


def replaced(text: str, pattern: str, replacement: str) -> str:
    return pc.replace_substring_regex(pa.array([text]), pattern, replacement)[0].as_py()


def strings(kind: str, count: int = 4000) -> list[str]:
    rng = random.Random(kind)
    return ["".join(rng.choice(PIECES[kind]) for _ in range(rng.randint(0, 14))) for _ in range(count)]


def test_block_tags_and_tags() -> None:
    bailed = 0
    for text in strings("html"):
        blocks = rewritten(textmarkup.strip_block_tags, text)
        if blocks is None:
            bailed += 1
            continue
        expected = replaced(text, ops._BLOCK_TAG_RE, "\n")
        assert blocks == expected, text
        assert rewritten(textmarkup.strip_tags, blocks) == replaced(expected, ops._TAG_RE, ""), text
    assert bailed == 0  # nothing in these pieces needs the script, style or comment expressions


@pytest.mark.parametrize("text", ["a <!-- b --> c", "<script>x</script>", "<STYLE x>", "<noscript>"])
def test_comments_and_scripts_are_left_to_the_regular_expressions(text: str) -> None:
    assert rewritten(textmarkup.strip_block_tags, text) is None


def test_entities() -> None:
    table = textmarkup.entity_table(("NFKC",))
    decoded = 0
    for text in strings("entities"):
        result = rewritten(textmarkup.decode_entities, text, *table)
        if result is not None:
            assert result == ops.decode_entities(pa.array([text]))[0].as_py(), text
            decoded += result != text
    assert decoded > 300


def test_the_entity_table_keeps_what_every_operation_reads_alike() -> None:
    names, name_offsets, values, value_offsets = textmarkup.entity_table(("NFKC", "NFD"))
    table = {
        names[name_offsets[k] : name_offsets[k + 1]].tobytes().decode(): values[
            value_offsets[k] : value_offsets[k + 1]
        ].tobytes()
        for k in range(len(name_offsets) - 1)
    }
    assert table["amp"] == b"&" and table["copy"] == "\u00a9".encode() and table["lt"] == b"<"
    # Letters, spaces and characters normalisation changes are left to ops.py.
    assert not {"eacute", "nbsp", "frac12", "hellip", "Tab"} & table.keys()


def test_emails() -> None:
    replacement = np.frombuffer(b"<EMAIL>", dtype=np.uint8)
    masked = 0
    for text in strings("emails"):
        result = rewritten(textmarkup.mask_emails, text, replacement)
        assert result == replaced(text, ops._EMAIL_RE, "<EMAIL>"), text
        masked += result != text
    assert masked > 500


def test_phones() -> None:
    replacement = np.frombuffer(b"<PHONE>", dtype=np.uint8)
    masked = 0
    for text in strings("phones"):
        result = rewritten(textmarkup.mask_phones, text, replacement)
        assert result == replaced(text, ops._PHONE_RE, r"\1<PHONE>\3"), text
        masked += result != text
    assert masked > 500


@pytest.mark.parametrize(
    ("text", "like"),
    [("10.0.0.1", True), ("v1.2", True), ("::1", True), ("a:b:c:d:e:f:g:h", True), ("1. 2", False), ("a:b", False)],
)
def test_ip_like_is_a_superset_of_the_ip_expressions(text: str, like: bool) -> None:
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    assert textmarkup.ip_like(data, 0, len(data)) is like
    if not like:
        assert replaced(text, ops._IPV4_RE, "x") == replaced(text, ops._IPV6_RE, "x") == text
