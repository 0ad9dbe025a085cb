"""Resolving spec.source to files, globs, the PVC mount, and cutting the input into read chunks."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeforge.api.datapipeline import PvcSource, SourceSpec
from kubeforge.constants import ENV_PVC_ROOT, PVC_MOUNT_ROOT
from kubeforge_trainer.data import sources
from kubeforge_trainer.data.errors import DataPipelineError


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl", "_SUCCESS", ".hidden/x.jsonl", "notes.txt"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    return tmp_path


def names(files: list[sources.SourceFile], root) -> list[str]:
    return [f.uri[len(str(root)) + 1 :] for f in files]


def test_directories_are_listed_recursively_in_order_without_hidden_files(tree):
    assert names(sources.list_files(str(tree), "f"), tree) == ["a.jsonl", "b.jsonl", "notes.txt", "sub/c.jsonl"]
    assert names(sources.list_files(f"file://{tree}/a.jsonl", "f"), tree) == ["a.jsonl"]


def test_globs_match_within_a_directory_unless_they_say_double_star(tree):
    assert names(sources.list_files(f"{tree}/*.jsonl", "f"), tree) == ["a.jsonl", "b.jsonl"]
    assert names(sources.list_files(f"{tree}/**/*.jsonl", "f"), tree) == ["a.jsonl", "b.jsonl", "sub/c.jsonl"]
    assert sources.glob_regex("/d/part-[!0-4].csv").fullmatch("/d/part-7.csv")


def test_missing_locations_name_the_field(tree):
    with pytest.raises(DataPipelineError, match=r"spec.source.uris\[1\]: .*/nope does not exist"):
        sources.list_files(f"{tree}/nope", "spec.source.uris[1]")
    with pytest.raises(DataPipelineError, match=r"spec.source.uris\[0\]: no files match .*\*.csv"):
        sources.list_files(f"{tree}/*.csv", "spec.source.uris[0]")


def test_pvc_source_reads_below_the_mount_root(tree, monkeypatch):
    monkeypatch.delenv(ENV_PVC_ROOT, raising=False)
    spec = SourceSpec(pvc=PvcSource(claim_name="corpus", path="/data/*.jsonl"))
    assert sources.source_locations(spec) == [(f"{PVC_MOUNT_ROOT}/corpus/data/*.jsonl", "spec.source.pvc.path")]
    (tree / "corpus").mkdir()
    (tree / "corpus" / "d.jsonl").write_text('{"text": "y"}\n')
    monkeypatch.setenv(ENV_PVC_ROOT, str(tree))
    files = sources.resolve_files(SourceSpec(pvc=PvcSource(claim_name="corpus")))
    assert names(files, tree) == ["corpus/d.jsonl"]


def test_resolve_files_deduplicates_overlapping_uris(tree):
    files = sources.resolve_files(SourceSpec(uris=[f"{tree}/a.jsonl", f"{tree}/*.jsonl"]))
    assert names(files, tree) == ["a.jsonl", "b.jsonl"]


def test_chunk_size_targets_a_few_chunks_per_core_within_bounds():
    assert sources.chunk_bytes(0, 2) == sources.MIN_CHUNK_BYTES
    assert sources.chunk_bytes(200 << 20, 2) == 25 << 20
    assert sources.chunk_bytes(100 << 30, 2) == sources.MAX_CHUNK_BYTES


def test_chunks_group_small_files_and_cut_big_line_files_but_not_compressed_or_csv():
    small = [sources.SourceFile(f"/d/{i}.jsonl", 100, "") for i in range(5)]
    big = sources.SourceFile("/d/big.jsonl", 1000, "")
    gz = sources.SourceFile("/d/big.jsonl.gz", 1000, "")
    chunks = sources.plan_chunks([*small, big, gz], "jsonl", "line", target=250)
    layout = [[(f.uri.rsplit("/", 1)[1], f.start, f.length) for f in c.files] for c in chunks]
    assert layout == [
        [("0.jsonl", 0, None), ("1.jsonl", 0, None), ("2.jsonl", 0, None)],
        [("3.jsonl", 0, None), ("4.jsonl", 0, None)],
        [("big.jsonl", 0, 250)],
        [("big.jsonl", 250, 250)],
        [("big.jsonl", 500, 250)],
        [("big.jsonl", 750, 250)],
        [("big.jsonl.gz", 0, None)],
    ]
    assert [c.index for c in chunks] == list(range(7))
    csv = sources.plan_chunks([sources.SourceFile("/d/a.csv", 1000, "")], "csv", "line", target=250)
    assert len(csv) == 1 and csv[0].files[0].length is None


def test_chunks_come_as_close_to_the_target_as_the_files_allow():
    # A big file is cut into the number of equal pieces closest to the target: no full pieces and a sliver.
    chunks = sources.plan_chunks([sources.SourceFile("/d/big.jsonl", 1010, "")], "jsonl", "line", target=250)
    assert [(c.files[0].start, c.files[0].length) for c in chunks] == [(0, 252), (252, 253), (505, 252), (757, 253)]
    # Files just over and just under the target each make one chunk, whole (not two halves beside full chunks).
    near = [sources.SourceFile("/d/a.jsonl", 251, ""), sources.SourceFile("/d/b.jsonl", 249, "")]
    chunks = sources.plan_chunks(near, "jsonl", "line", target=250)
    assert [[(f.uri, f.start, f.length) for f in c.files] for c in chunks] == [
        [("/d/a.jsonl", 0, None)],
        [("/d/b.jsonl", 0, None)],
    ]
    # Small files join a group while that overshoots the target by less than the group falls short of it.
    halves = [sources.SourceFile(f"/d/{i}.jsonl", size, "") for i, size in enumerate([124, 125, 126, 100])]
    chunks = sources.plan_chunks(halves, "jsonl", "line", target=250)
    names = [[f.uri.rsplit("/", 1)[1] for f in c.files] for c in chunks]
    assert names == [["0.jsonl", "1.jsonl"], ["2.jsonl", "3.jsonl"]]


def test_big_parquet_files_are_cut_by_row_groups(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 50 for i in range(1000)]}), path, row_group_size=100)
    size = path.stat().st_size
    chunks = sources.plan_chunks([sources.SourceFile(str(path), size, "")], "parquet", "line", target=size // 4)
    groups = [(c.files[0].start, c.files[0].length) for c in chunks]
    assert groups[0][0] == 0 and sum(n for _, n in groups) == 10 and len(groups) >= 4
    assert max(n for _, n in groups) - min(n for _, n in groups) <= 1
    assert all(start == prev_start + prev_n for (prev_start, prev_n), (start, _) in itertools.pairwise(groups))


def test_s3_uris_take_the_endpoint_from_the_aws_variables_unless_they_name_one(monkeypatch):
    from kubeforge_trainer.storage import with_s3_endpoint

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert with_s3_endpoint("s3://b/k") == "s3://b/k"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert with_s3_endpoint("s3://b/k") == "s3://b/k?endpoint_override=http%3A%2F%2Fminio%3A9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:9000")
    assert with_s3_endpoint("s3://b/k?region=eu") == "s3://b/k?region=eu&endpoint_override=http%3A%2F%2Fs3only%3A9000"
    assert with_s3_endpoint("s3://b/k?endpoint_override=x:1") == "s3://b/k?endpoint_override=x:1"
    assert with_s3_endpoint("gs://b/k") == "gs://b/k" and with_s3_endpoint("/data/k") == "/data/k"
