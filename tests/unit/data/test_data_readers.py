"""Reading chunks of every format, and what happens to bad input under onError fail and skip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeforge.api.datapipeline import LengthFilterParams
from kubeforge_trainer.data import stages
from kubeforge_trainer.data.columns import KEY, LABEL, RID, TEXT, TIME, make_rid, numeric_column
from kubeforge_trainer.data.errors import DataPipelineError
from kubeforge_trainer.data.plan import Step
from kubeforge_trainer.data.readers import Chunk, FileSlice, ReadSpec, read_chunk
from kubeforge_trainer.data.sources import SourceFile, plan_chunks


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def whole(*paths: Path, index: int = 0) -> Chunk:
    return Chunk(index, tuple(FileSlice(str(p)) for p in paths))


def test_jsonl_reads_text_and_optional_fields_and_numbers_rows_in_order(tmp_path):
    path = jsonl(
        tmp_path / "a.jsonl",
        [
            {"text": "one", "label": "x", "id": 7, "ts": "2024-01-02T03:04:05Z", "score": 1.5},
            {"text": "two", "label": 3, "id": "b", "ts": 1700000000, "score": "2"},
        ],
    )
    spec = ReadSpec(format="jsonl", label_field="label", key_field="id", time_field="ts", numeric_fields=("score",))
    result = read_chunk(whole(path, index=3), spec)
    t = result.table
    assert t.column(TEXT).to_pylist() == ["one", "two"]
    assert t.column(RID).to_pylist() == [make_rid(3, 0), make_rid(3, 1)]
    assert t.column(LABEL).to_pylist() == ["x", "3"]
    assert t.column(KEY).to_pylist() == ["7", "b"]
    assert t.column(TIME).to_pylist() == [1704164645000000, 1700000000000000]
    assert t.column(numeric_column("score")).to_pylist() == [1.5, 2.0]
    assert result.rows_errored == 0


def test_byte_range_slices_read_every_line_exactly_once(tmp_path):
    rows = [{"text": f"document number {i} " + "x" * (i % 37)} for i in range(500)]
    path = jsonl(tmp_path / "big.jsonl", rows)
    size = path.stat().st_size
    chunks = plan_chunks([SourceFile(str(path), size, "")], "jsonl", "line", target=997)
    assert len(chunks) > 10
    texts = [t for c in chunks for t in read_chunk(c, ReadSpec(format="jsonl")).table.column(TEXT).to_pylist()]
    assert texts == [r["text"] for r in rows]
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"line {i}\n" for i in range(300)))
    chunks = plan_chunks([SourceFile(str(lines), lines.stat().st_size, "")], "text", "line", target=64)
    texts = [t for c in chunks for t in read_chunk(c, ReadSpec(format="text")).table.column(TEXT).to_pylist()]
    assert texts == [f"line {i}" for i in range(300)]


def bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "good one"}\n'
        b"not json at all\n"
        b'{"text": "bad \xff\xfe bytes"}\n'
        b'{"text": 42}\n'
        b"[1, 2]\n"
        b'{"text": "good two"}\n'
    )
    return path


def test_bad_jsonl_rows_fail_with_file_line_and_field(tmp_path):
    with pytest.raises(DataPipelineError) as info:
        read_chunk(whole(bad_jsonl(tmp_path)), ReadSpec(format="jsonl"))
    message = str(info.value)
    assert message.startswith("spec.source.format: ") and "bad.jsonl row 2: not valid JSON" in message
    assert "\n" not in message


def test_bad_jsonl_rows_are_counted_and_skipped(tmp_path):
    result = read_chunk(whole(bad_jsonl(tmp_path)), ReadSpec(format="jsonl", on_error="skip"))
    assert result.table.column(TEXT).to_pylist() == ["good one", "good two"]
    assert result.rows_errored == 4
    reasons = sorted((e.row, e.field, e.reason) for e in result.errors)
    assert reasons == [
        (2, "spec.source.format", "not valid JSON: Expecting value"),
        (3, "spec.source.format", "invalid UTF-8 at byte 14"),
        (4, "spec.source.textField", "field 'text' is int, expected a string"),
        (5, "spec.source.format", "not a JSON object"),
    ]


def test_invalid_utf8_is_never_replaced_silently(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataPipelineError, match="invalid UTF-8"):
        read_chunk(whole(path), ReadSpec(format="jsonl"))


def test_missing_text_field_fails_or_errors_every_row_of_the_file(tmp_path):
    path = jsonl(tmp_path / "other.jsonl", [{"body": "a"}, {"body": "b"}])
    with pytest.raises(
        DataPipelineError, match=r"spec.source.textField: .*other.jsonl: no column 'text' \(columns: body\)"
    ):
        read_chunk(whole(path), ReadSpec(format="jsonl"))
    result = read_chunk(whole(path), ReadSpec(format="jsonl", on_error="skip"))
    assert result.table.num_rows == 0 and result.rows_errored == 2


def test_rows_without_text_pass_for_drop_empty_or_are_bad_rows(tmp_path):
    path = jsonl(tmp_path / "nulls.jsonl", [{"text": "a"}, {"text": None}, {"other": 1}])
    kept = read_chunk(whole(path), ReadSpec(format="jsonl", allow_missing_text=True)).table
    assert kept.column(TEXT).to_pylist() == ["a", None, None]
    result = read_chunk(whole(path), ReadSpec(format="jsonl", allow_missing_text=False, on_error="skip"))
    assert result.table.column(TEXT).to_pylist() == ["a"] and result.rows_errored == 2


def test_schema_drift_between_files(tmp_path):
    good = jsonl(tmp_path / "a.jsonl", [{"text": "fine", "label": "x"}])
    drifted = jsonl(tmp_path / "b.jsonl", [{"text": "also fine", "label": {"nested": True}}])
    spec = ReadSpec(format="jsonl", label_field="label")
    with pytest.raises(DataPipelineError, match=r"spec.source.labelField: .*b.jsonl row 1: field 'label' is dict"):
        read_chunk(whole(good, drifted), spec)
    result = read_chunk(whole(good, drifted), ReadSpec(format="jsonl", label_field="label", on_error="skip"))
    assert result.table.column(TEXT).to_pylist() == ["fine"] and result.rows_errored == 1


def test_unreadable_file_fails_or_is_counted(tmp_path):
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"this is not gzip data")
    with pytest.raises(DataPipelineError, match=r"spec.source: .*broken.jsonl.gz: cannot read"):
        read_chunk(whole(broken), ReadSpec(format="jsonl"))
    result = read_chunk(whole(broken), ReadSpec(format="jsonl", on_error="skip"))
    assert result.files_errored == 1 and result.table.num_rows == 0


def test_gzipped_jsonl_is_decompressed(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    assert read_chunk(whole(path), ReadSpec(format="jsonl")).table.column(TEXT).to_pylist() == ["zipped"]


def test_csv_with_quoted_newlines_invalid_rows_and_invalid_utf8(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(
        b'text,label,extra\n"multi\nline, quoted",pos,1\nplain,neg,2\ntoo,many,cells,here\nbad \xff,neg,3\n,neg,4\n'
    )
    spec = ReadSpec(format="csv", label_field="label", on_error="skip", allow_missing_text=True)
    result = read_chunk(whole(path), spec)
    t = result.table
    assert t.column(TEXT).to_pylist() == ["multi\nline, quoted", "plain", ""]
    assert t.column(LABEL).to_pylist() == ["pos", "neg", "neg"]
    assert result.rows_errored == 2
    with pytest.raises(DataPipelineError, match="expected 3 columns, got 4"):
        read_chunk(whole(path), ReadSpec(format="csv"))


def test_csv_without_the_text_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("body,label\nx,y\n")
    with pytest.raises(DataPipelineError, match=r"spec.source.textField: .*no column 'text' \(columns: body, label\)"):
        read_chunk(whole(path), ReadSpec(format="csv"))


def test_parquet_row_groups_binary_text_and_numeric_columns(tmp_path):
    path = tmp_path / "a.parquet"
    table = pa.table(
        {
            "content": pa.array([b"first", b"second", b"\xff bad", b"fourth"], pa.binary()),
            "price": pa.array([1, 2, 3, 4], pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    spec = ReadSpec(format="parquet", text_field="content", numeric_fields=("price",), on_error="skip")
    result = read_chunk(whole(path), spec)
    assert result.table.column(TEXT).to_pylist() == ["first", "second", "fourth"]
    assert result.table.column(numeric_column("price")).to_pylist() == [1.0, 2.0, 4.0]
    assert result.rows_errored == 1 and "row group 1" in result.errors[0].source
    second_group = read_chunk(Chunk(0, (FileSlice(str(path), 1, 1),)), spec)
    assert second_group.table.column(TEXT).to_pylist() == ["fourth"]
    with pytest.raises(DataPipelineError, match="no column 'text'"):
        read_chunk(whole(path), ReadSpec(format="parquet"))


def test_text_files_one_document_per_file_or_per_line(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first line\r\nsecond line\n\nlast")
    b.write_bytes(b"caf\xc3\xa9\nbad \xff line\n")
    per_file = read_chunk(whole(a, b), ReadSpec(format="text", text_mode="file", on_error="skip"))
    assert per_file.table.column(TEXT).to_pylist() == ["first line\r\nsecond line\n\nlast"]
    assert per_file.rows_errored == 1
    per_line = read_chunk(whole(a, b), ReadSpec(format="text", text_mode="line", on_error="skip"))
    assert per_line.table.column(TEXT).to_pylist() == ["first line", "second line", "", "last", "café"]
    assert per_line.rows_errored == 1 and per_line.errors[0].row == 2


def test_split_fields_must_be_present_on_every_row(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", [{"text": "a", "ts": "2024-01-01"}, {"text": "b", "ts": "yesterday"}])
    spec = ReadSpec(format="jsonl", time_field="ts", time_field_path="spec.split.keyField")
    with pytest.raises(
        DataPipelineError, match=r"spec.split.keyField: .*row 2: field 'ts' is missing or not a timestamp"
    ):
        read_chunk(whole(path), spec)


def test_a_read_task_accounts_for_every_row_of_its_chunk(tmp_path):
    step = Step(0, "lengthFilter", "lengthFilter", LengthFilterParams(min_chars=len("good one") + 1))
    table, stats = stages.read_and_clean(whole(bad_jsonl(tmp_path)), ReadSpec(format="jsonl", on_error="skip"), [step])
    assert table.column(TEXT).to_pylist() == []  # both good rows are 8 characters
    rows_in, rows_read, rows_errored, _ = stats["read"]
    assert (rows_in, rows_read, rows_errored) == (6, 2, 4) and stats["filesErrored"] == 0
    assert [count[:2] for count in stats["steps"]] == [(2, 0)]
    assert sorted(e["row"] for e in stats["errors"]) == [2, 3, 4, 5]


def test_a_read_task_raises_the_users_error_under_on_error_fail(tmp_path):
    with pytest.raises(DataPipelineError, match=r"bad\.jsonl row 2: not valid JSON"):
        stages.read_and_clean(whole(bad_jsonl(tmp_path)), ReadSpec(format="jsonl"), [])
