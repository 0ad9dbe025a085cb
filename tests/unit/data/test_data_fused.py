"""The fused cleaning pass gives exactly what the operations give one after another: the same rows, text, other
columns, per-operation counts and content hashes, on text built to take every path of the pass."""

from __future__ import annotations

import random
import subprocess
import sys
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kubeforge.api import DataPipelineSpec
from kubeforge_trainer.data import hashing, ops, stages
from kubeforge_trainer.data.columns import CONTENT_HASH, LABEL, RID, TEXT
from kubeforge_trainer.data.kernels import fused, textkernels, textscan
from kubeforge_trainer.data.plan import plan_pipeline

BENCH_STEPS = [
    {"dropEmpty": {}},
    {"stripHtml": {}},
    {"normalizeUnicode": {"form": "NFKC"}},
    {"collapseWhitespace": {}},
    {"maskPii": {}},
    {"lengthFilter": {"minChars": 12, "maxChars": 400}},
    {"qualityFilter": {"minAlnumRatio": 0.5, "maxRepeatedLineRatio": 0.5}},
]
STEP_LISTS = [
    BENCH_STEPS,
    [{"collapseWhitespace": {}}],
    # Filters that count characters or lines before the collapse: whitespace rows take the exact path.
    [{"qualityFilter": {"minAlnumRatio": 0.3, "maxRepeatedLineRatio": 0.2}}, {"collapseWhitespace": {}}],
    [{"lengthFilter": {"minChars": 5, "maxWords": 6}}, {"collapseWhitespace": {}}, {"qualityFilter": {}}],
    [{"maskPii": {"emails": False, "phoneNumbers": False}}, {"dropEmpty": {}}],
    [{"maskPii": {"ipAddresses": False, "replacement": "[{kind}]"}}, {"lengthFilter": {"minWords": 3}}],
    [{"stripHtml": {}}, {"lengthFilter": {"minWords": 2}}],
    [{"normalizeUnicode": {"form": "NFD"}}, {"qualityFilter": {"maxRepeatedLineRatio": 0.0}}],
    [{"qualityFilter": {"minAlnumRatio": 0.7, "maxRepeatedLineRatio": 0.34}}],
    # Rewrites out of the pass's order, or a filter between them: rows with HTML or PII take the exact path.
    [{"maskPii": {}}, {"collapseWhitespace": {}}, {"stripHtml": {}}, {"dropEmpty": {}}],
    [{"stripHtml": {}}, {"lengthFilter": {"minChars": 20}}, {"maskPii": {"replacement": "#"}}],
    [{"stripHtml": {}}, {"dropEmpty": {}}, {"normalizeUnicode": {"form": "NFD"}}, {"maskPii": {"emails": False}}],
]

# Pieces of plain prose and of everything that takes the exact path or a rewrite.
PLAIN = ["word", "Word", "UPPER", "a", "x-y", "it's", "end.", "(paren)", "q?", "mid;", "9", "12", "1999"]
SPECIAL = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\n\n\n",
    " \n",
    "\t",
    "\r\n",
    "<p>",
    "</div>",
    "<H1>",
    "<a href='x'>",
    "<br/>",
    "</td>",
    "<thead>",
    "<!-- note -->",
    "<script>x()</script>",
    "&amp;",
    "&copy;",
    "&lt;",
    "&commat;",
    "&nbsp;",
    "&#39;",
    "&eacute;",
    "AT&T",
    "&",
    "<",
    ">",
    "a@b.io",
    "first.last@mail.example.org",
    "x@y",
    "@",
    "10.0.0.1",
    "1.2",
    "::1",
    "a:b",
    "555-123-4567",
    "+1 (555) 123 4567",
    "(555)123.4567",
    "+4420794609",
    "123 456",
    "é",
    "\u00a0",
    "\u3000",
    "ﬁ",
    "\x0b",
    "\x1c",
    "\x7f",
    "Å",
]


def random_text(rng: random.Random, special: float) -> str:
    pieces = []
    for _ in range(rng.randint(0, 24)):
        pieces.append(rng.choice(SPECIAL) if rng.random() < special else rng.choice(PLAIN))
        if rng.random() < 0.8:
            pieces.append(" ")
    return "".join(pieces)


def corpus(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    rows: list[str | None] = [random_text(rng, rng.choice([0.0, 0.0, 0.05, 0.3])) for _ in range(n)]
    # Repeated lines (some of them only after the collapse), blank-only, every length around the 8-byte words.
    rows += ["same line\nsame line\nother", "a  b\na b\nc", " \n \n", "", " ", None, "\n", "x\n\n\n\ny"]
    rows += ["abcdefgh"[: k % 8 + 1] * (k // 8 + 1) for k in range(40)] + ["ab " * k for k in range(12)]
    return rows


def local_steps(steps: list[dict]) -> tuple:
    spec = DataPipelineSpec.model_validate({"source": {"uris": ["/d"]}, "output": {"uri": "/o"}, "steps": steps})
    return plan_pipeline(spec).segments[0].local_steps


def table_of(rows: list[str | None], text_type: pa.DataType = pa.string()) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            TEXT: pa.array(rows, text_type),
            RID: pa.array(range(n), pa.int64()),
            LABEL: pa.array([f"l{i % 3}" for i in range(n)], pa.string()),
        }
    )


def kinds_of(table: pa.Table, steps: tuple) -> np.ndarray:
    return fused.scan(textscan.utf8_bytes(table.column(TEXT)), steps, True)[0]


@pytest.mark.parametrize("steps", STEP_LISTS, ids=lambda s: "+".join(next(iter(d)) for d in s))
def test_fused_pass_equals_the_operations_one_by_one(steps: list[dict]) -> None:
    plan = local_steps(steps)
    table = table_of(corpus(3000, seed=len(steps)))
    result, counts, hashes = fused.run_fused(table, plan, content_hash=True)
    expected, expected_counts = fused.apply_each(table, plan)
    assert result.equals(expected)
    assert [c[:2] for c in counts] == [c[:2] for c in expected_counts]
    assert hashes.tolist() == hashing.content_hashes(expected.column(TEXT)).tolist()
    # Every path was taken: rows left alone, rows only the pass rewrote (when it may) and rows for the exact path.
    kinds = np.bincount(kinds_of(table, plan), minlength=3)
    assert kinds[textkernels.UNCHANGED] > 100 and kinds[textkernels.EXACT_PATH] > 100
    if fused.scan_settings(plan, False)[2]:
        assert kinds[textkernels.REWRITTEN] > 100


def test_html_and_pii_rows_are_rewritten_in_the_pass() -> None:
    rows = [
        "<html><body><h1>Title</h1><p>Some prose.</p><p>&copy; 2024 &amp; more</p></body></html>",
        "Contact bob@example.com or call +1 (555) 123-4567.",
        "<!-- a comment --> left to the regular expressions",
        "10.0.0.1 is IP-like",
        "caf\u00e9 is not ASCII",
    ]
    table = table_of(rows)
    plan = local_steps(BENCH_STEPS)
    kinds = kinds_of(table, plan)
    assert kinds.tolist() == [textkernels.REWRITTEN] * 2 + [textkernels.EXACT_PATH] * 3
    result, _, _ = fused.run_fused(table, plan)
    assert result.column(TEXT).to_pylist()[:2] == [
        "Title\n\nSome prose.\n\n\u00a9 2024 & more",
        "Contact <EMAIL> or call <PHONE>.",
    ]


@pytest.mark.parametrize(
    ("steps", "rewrites"),
    [
        (BENCH_STEPS, True),
        ([{"dropEmpty": {}}, {"maskPii": {}}, {"dropEmpty": {}}], True),
        ([{"collapseWhitespace": {}}, {"stripHtml": {}}], False),
        ([{"stripHtml": {}}, {"qualityFilter": {}}, {"collapseWhitespace": {}}], False),
        ([{"maskPii": {"replacement": ""}}], False),
        ([{"maskPii": {"replacement": "\u2588"}}], False),
        ([{"maskPii": {}}, {"maskPii": {}}], False),
    ],
)
def test_the_pass_rewrites_markup_only_in_its_own_order(steps: list[dict], rewrites: bool) -> None:
    assert bool(fused.scan_settings(local_steps(steps), False)[8]) is rewrites


def test_plain_prose_never_takes_the_exact_path() -> None:
    rows = ["Plain words, with punctuation; and 1999 or 12 numbers.", "Two\nlines", "Spaced  out ", "Upper CASE"]
    # With the markup rewrites on, every row but plain one-line prose is rewritten in the pass.
    kinds = kinds_of(table_of(rows), local_steps(BENCH_STEPS))
    assert kinds.tolist() == [textkernels.REWRITTEN] * 3 + [textkernels.UNCHANGED]
    # Without them, only rows the operations change are.
    steps = local_steps([{"collapseWhitespace": {}}, {"lengthFilter": {"minChars": 12}}, {"maskPii": {}}])
    assert fused.scan_settings(steps, False)[8] == 0
    kinds = kinds_of(table_of(rows), steps)
    assert kinds.tolist() == [textkernels.UNCHANGED, textkernels.UNCHANGED, textkernels.REWRITTEN, 0]


def test_large_strings_and_sliced_tables_keep_their_type() -> None:
    plan = local_steps(BENCH_STEPS)
    table = table_of(corpus(500, seed=9), pa.large_string()).slice(7, 400)
    result, _, _ = fused.run_fused(table, plan)
    expected, _ = fused.apply_each(table, plan)
    assert result.schema.field(TEXT).type == pa.large_string()
    assert result.equals(expected)


def test_nothing_fused_is_left_out_of_the_accounting() -> None:
    plan = local_steps(BENCH_STEPS)
    table = table_of(corpus(1000, seed=5))
    result, counts, _ = fused.run_fused(table, plan)
    assert counts[0][0] == table.num_rows and counts[-1][1] == result.num_rows
    assert all(counts[i][1] == counts[i + 1][0] for i in range(len(counts) - 1))
    assert sum(rows_in - rows_out for rows_in, rows_out, _ in counts) == table.num_rows - result.num_rows


def test_apply_local_steps_fuses_the_first_run_and_adds_the_content_hash() -> None:
    steps = local_steps(
        [*BENCH_STEPS[:4], {"label": {"rules": [{"label": "w", "keywords": ["word"]}], "default": "o"}}]
    )
    assert fused.fusable_prefix(steps) == 4
    table = table_of(corpus(800, seed=2)).drop_columns([LABEL])
    result, counts = stages.apply_local_steps(table, steps, content_hash=True)
    expected, expected_counts = fused.apply_each(table, steps)
    assert result.drop_columns([CONTENT_HASH]).equals(expected)
    assert [c[:2] for c in counts] == [c[:2] for c in expected_counts]
    assert result.column(CONTENT_HASH).to_numpy().tolist() == hashing.content_hashes(expected.column(TEXT)).tolist()


def test_normalized_hash_equals_the_hash_of_the_normalized_text() -> None:
    rng = random.Random(4)
    alphabet = [chr(c) for c in range(0x80)] + ["ab", "CD", "  ", "\n\n"]
    rows = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    rows += [" \u00a0A b\u3000", "\x1c a\x1fb \x1d", "É  é"]
    text = pa.array(rows)
    hashes = hashing.content_hashes(text)
    normalized = textscan.utf8_bytes(hashing.normalized_text(text))
    assert hashes.tolist() == textkernels.hash_rows(normalized.data, normalized.starts, normalized.ends).tolist()
    # Texts that normalise apart hash apart.
    assert len(set(hashes.tolist())) == len(set(hashing.normalized_text(text).to_pylist())) > 2500


@pytest.mark.parametrize("form", ["NFC", "NFKC", "NFD", "NFKD"])
def test_normalization_prefilter_skips_only_rows_normalization_leaves_alone(form: str) -> None:
    rng = random.Random(form)
    two_byte = [chr(c) for c in range(0x80, 0x800)]
    combining = [chr(c) for c in range(0x300, 0x370)] + ["\u3099", "\u0e48", "\u1161"]
    rows = [
        "".join(rng.choice(["a", "e", " ", *two_byte, *combining[:3]]) for _ in range(rng.randint(0, 12)))
        for _ in range(4000)
    ]
    rows += ["".join(rng.choice(two_byte + combining) for _ in range(6)) for _ in range(1000)] + [
        "e\u0301",
        "\u1100\u1161",
    ]
    text = pa.array(rows)
    skipped = ~textscan.rows_with(textscan.utf8_bytes(text), ops.may_normalize(textscan.utf8_bytes(text).data, form))
    assert skipped.sum() > 500
    normalized = pc.utf8_normalize(text, form=form).to_pylist()
    assert all(normalized[i] == rows[i] == unicodedata.normalize(form, rows[i]) for i in np.flatnonzero(skipped))


def test_compile_kernels_compiles_every_kernel_the_data_step_calls() -> None:
    # In a fresh interpreter: what the trainer image and scripts/setup.sh run, so no worker compiles on its block.
    script = (
        "import numba\n"
        "from kubeforge_trainer.data import minhash, stages\n"
        "from kubeforge_trainer.data.kernels import textkernels\n"
        "stages.compile_kernels()\n"
        "called = ['fused_scan', 'gather', 'hash_rows', 'normalized_hash_rows']\n"
        "missing = [name for name in called if not getattr(textkernels, name).signatures]\n"
        "print(missing + ([] if minhash._fold_minima.signatures else ['_fold_minima']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
