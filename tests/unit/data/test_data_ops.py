"""The row-local cleaning operations, each on a small Arrow table."""

from __future__ import annotations

import pyarrow as pa
import pytest
from kubeforge.api.datapipeline import (
    LabelParams,
    LabelRule,
    LengthFilterParams,
    PiiMaskParams,
    QualityFilterParams,
    ScriptFilterParams,
    UnicodeParams,
)
from kubeforge_trainer.data import ops
from kubeforge_trainer.data.columns import LABEL, RID, TEXT


def table(texts: list[str | None], **extra: list) -> pa.Table:
    columns = {TEXT: pa.array(texts, pa.string()), RID: pa.array(range(len(texts)), pa.int64())}
    columns.update({k: pa.array(v) for k, v in extra.items()})
    return pa.table(columns)


def texts(t: pa.Table) -> list[str | None]:
    return t.column(TEXT).to_pylist()


def test_drop_empty_drops_missing_blank_and_unicode_blank_text_and_keeps_other_columns():
    t = table(["keep me", None, "", "  \t\n", "\u00a0\u3000", " x "])
    out = ops.drop_empty(t)
    assert texts(out) == ["keep me", " x "]
    assert out.column(RID).to_pylist() == [0, 5]


def test_strip_html_removes_tags_scripts_comments_and_decodes_entities():
    t = table(
        [
            "<html><head><style>p {color: red}</style></head><body><p>Hello</p><div>World</div></body></html>",
            "Fish &amp; chips &copy; 2024 &#65;&#x42; <!-- hidden --><b>bold</b>",
            "a < b and c > d stays",
            None,
        ]
    )
    out = texts(ops.strip_html(t))
    assert "color" not in out[0] and "<" not in out[0]
    assert out[0].split() == ["Hello", "World"]
    assert out[1] == "Fish & chips © 2024 AB bold"
    assert out[2] == "a < b and c > d stays"
    assert out[3] is None


def test_normalize_unicode_nfkc_folds_compatibility_characters():
    out = texts(ops.normalize_unicode(table(["ﬁne ①", "Ｆｕｌｌ"]), UnicodeParams(form="NFKC")))
    assert out == ["fine 1", "Full"]
    assert texts(ops.normalize_unicode(table(["e\u0301"]), UnicodeParams(form="NFC"))) == ["é"]


def test_collapse_whitespace_collapses_spaces_and_blank_lines_and_trims():
    out = texts(ops.collapse_whitespace(table(["  a \t b\u00a0 c \r\n\r\n\r\n\n d  ", "x\n\ny"])))
    assert out == ["a b c\n\nd", "x\n\ny"]


def test_length_filter_bounds_characters_and_words():
    t = table(["one two three", "one", "a b c d e f g h", None])
    assert texts(ops.length_filter(t, LengthFilterParams(min_chars=4))) == ["one two three", "a b c d e f g h"]
    assert texts(ops.length_filter(t, LengthFilterParams(max_chars=3))) == ["one", None]
    assert texts(ops.length_filter(t, LengthFilterParams(min_words=2, max_words=3))) == ["one two three"]


def test_quality_filter_alnum_ratio_and_repeated_lines():
    assert ops.alnum_ratio(pa.array(["ab!!", "", "a b"])).tolist() == [0.5, 0.0, 1.0]
    assert ops.repeated_line_ratio(pa.array(["a\nb\na\na", "x\n\n\ny", ""])).tolist() == [0.5, 0.0, 0.0]
    t = table(["!!!! ????", "spam\nspam\nspam\nspam", "A normal sentence.\nAnother one."])
    out = ops.quality_filter(t, QualityFilterParams(min_alnum_ratio=0.5, max_repeated_line_ratio=0.5))
    assert texts(out) == ["A normal sentence.\nAnother one."]


def test_script_filter_keeps_documents_in_allowed_scripts():
    t = table(["plain english text", "русский текст", "mostly latin with один word", "12345", "日本語のテキスト"])
    assert texts(ops.script_filter(t, ScriptFilterParams(scripts=["latin"], min_ratio=0.8))) == [
        "plain english text",
        "mostly latin with один word",
    ]
    assert texts(ops.script_filter(t, ScriptFilterParams(scripts=["cyrillic", "cjk"], min_ratio=0.9))) == [
        "русский текст",
        "日本語のテキスト",
    ]


def test_mask_pii_masks_emails_ips_and_phone_numbers_but_not_dates_or_versions():
    text = (
        "Write to jane.doe+news@mail.example.org or 10.0.0.254, call +1 (555) 123-4567 or 030 1234 5678; "
        "host fe80::1ff:fe23:4567:890a; released 2024-03-15 as v1.2.3; std::vector stays"
    )
    out = texts(ops.mask_pii(table([text]), PiiMaskParams()))[0]
    assert out == (
        "Write to <EMAIL> or <IP>, call <PHONE> or <PHONE>; host <IP>; released 2024-03-15 as v1.2.3; std::vector stays"
    )
    only_email = texts(ops.mask_pii(table([text]), PiiMaskParams(phone_numbers=False, ip_addresses=False)))[0]
    assert "<EMAIL>" in only_email and "10.0.0.254" in only_email and "123-4567" in only_email
    custom = texts(ops.mask_pii(table(["a@b.io"]), PiiMaskParams(replacement="[\\{kind}]")))[0]
    assert custom == "[\\EMAIL]"


def test_label_rules_first_match_wins_existing_labels_pass_through_and_unmatched_are_dropped():
    t = table(["I love cats", "dogs rule", "nothing here", "Catsup is not a cat"], label=[None, "given", None, None])
    rules = [LabelRule(label="cat", keywords=["cats", "cat"]), LabelRule(label="dog", pattern="(?i)dogs?")]
    out = ops.label_rows(t, LabelParams(rules=rules))
    assert list(zip(texts(out), out.column(LABEL).to_pylist(), strict=True)) == [
        ("I love cats", "cat"),
        ("dogs rule", "given"),
        ("Catsup is not a cat", "cat"),
    ]
    with_default = ops.label_rows(t, LabelParams(rules=rules, default="other", overwrite=True))
    assert with_default.column(LABEL).to_pylist() == ["cat", "dog", "other", "cat"]


def test_label_without_existing_column_creates_it():
    out = ops.label_rows(
        table(["spam offer", "hello"]), LabelParams(rules=[LabelRule(label="spam", keywords=["spam"])])
    )
    assert out.column(LABEL).to_pylist() == ["spam"]


def test_check_regex_rejects_what_re2_cannot_run():
    assert ops.check_regex("(?i)cats?") is None
    assert "invalid" in ops.check_regex("(?<=a)b").lower()


@pytest.mark.parametrize("kind", sorted(ops.LOCAL_OPERATIONS))
def test_every_local_operation_handles_an_empty_table(kind):
    params = {
        "normalizeUnicode": UnicodeParams(),
        "lengthFilter": LengthFilterParams(min_chars=1),
        "qualityFilter": QualityFilterParams(min_alnum_ratio=0.5, max_repeated_line_ratio=0.5),
        "scriptFilter": ScriptFilterParams(),
        "maskPii": PiiMaskParams(),
        "label": LabelParams(rules=[LabelRule(label="x", keywords=["x"])], default="y"),
    }.get(kind)
    out = ops.LOCAL_OPERATIONS[kind](table([]), params)
    assert out.num_rows == 0


def test_character_class_counts_agree_with_python_on_ascii_and_unicode_rows():
    rows = ["Hello, World 42!", "naïve café — ok?", "", "   \t\n", "Привет мир 7", None, "日本 語"]
    alnum = ops._class_counts(pa.array(rows), ops._ASCII_ALNUM, r"\p{L}\p{N}").tolist()
    assert alnum == [sum(c.isalnum() for c in r or "") for r in rows]
    spaces = ops._class_counts(pa.array(rows), ops._ASCII_SPACE, ops.WHITESPACE[1:-1]).tolist()
    assert spaces == [sum(c.isspace() for c in r or "") for r in rows]
    assert ops.ascii_class_counts(pa.array(["ab1", "x y"]).slice(1), ops._ASCII_ALPHA).tolist() == [2]
    assert ops.ascii_class_counts(pa.array(["", "ab", "", "cd", ""]), ops._ASCII_ALPHA).tolist() == [0, 2, 0, 2, 0]
