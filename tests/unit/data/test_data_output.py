"""Shard planning and atomic writing, the manifest, the accounting identity and the per-block statistics rows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeforge.api import DataPipelineSpec
from kubeforge.api.datapipeline import LengthFilterParams
from kubeforge_trainer.data import manifest, stages, writer
from kubeforge_trainer.data.columns import RID, TEXT
from kubeforge_trainer.data.manifest import AccountingError, OpStats
from kubeforge_trainer.data.plan import Step


def test_plan_shards_cuts_the_concatenated_blocks_in_order():
    shards = writer.plan_shards([5, 0, 7, 3], units_per_shard=4)
    ranges = [[(p.block, p.start, p.end) for p in shard] for shard in shards]
    assert ranges == [[(0, 0, 4)], [(0, 4, 5), (2, 0, 3)], [(2, 3, 7)], [(3, 0, 3)]]
    truncated = writer.plan_shards([5, 7], units_per_shard=4, total=8)
    assert [[(p.block, p.start, p.end) for p in s] for s in truncated] == [[(0, 0, 4)], [(0, 4, 5), (1, 0, 3)]]
    assert writer.plan_shards([0, 0], 4) == []


def test_shard_tables_for_both_tasks():
    table, tokens = stages.shard_table(
        "languageModeling", 3, [np.arange(4, dtype=np.int32), np.arange(2, dtype=np.int32)]
    )
    assert table.column("input_ids").to_pylist() == [[0, 1, 2], [3, 0, 1]] and tokens == 6
    part = pa.table({"input_ids": pa.array([[1, 2], [3]], pa.list_(pa.int32())), "label": pa.array([0, 1], pa.int32())})
    table, tokens = stages.shard_table("classification", 3, [part, stages.slice_output(part, 1, 2)])
    assert table.num_rows == 3 and tokens == 4
    assert stages.slice_output(np.arange(10), 2, 5).tolist() == [2, 3, 4]


def test_parquet_bytes_are_deterministic_and_respect_compression():
    table = pa.table({"input_ids": pa.array([[1, 2, 3]] * 1000, pa.list_(pa.int32()))})
    assert writer.parquet_bytes(table, "zstd") == writer.parquet_bytes(table, "zstd")
    assert len(writer.parquet_bytes(table, "none")) > len(writer.parquet_bytes(table, "zstd"))


def test_write_and_commit_replace_an_old_dataset_and_clean_temporary_files(tmp_path):
    out = str(tmp_path / "out")
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "part-00007.parquet").write_bytes(b"stale shard of an older run")
    (tmp_path / "out" / "train" / ".part-00000.parquet.tmp-deadrun").write_bytes(b"debris of a crashed run")
    (tmp_path / "out" / writer.MANIFEST_FILE).write_text("{}")
    assert writer.remove_temporary(out, ("train", "validation", "test")) == 1

    table = pa.table({"input_ids": pa.array([[1, 2]], pa.list_(pa.int32()))})
    info = writer.write_shard(
        out, writer.tmp_shard_path("train", 0, "run1"), writer.shard_path("train", 0), table, "zstd", 2
    )
    assert info.rows == 1 and info.tokens == 2
    assert not (tmp_path / "out" / "train" / "part-00000.parquet").exists()  # nothing final before the commit
    writer.remove_manifest(out)
    writer.commit_shards(out, [info], ("train", "validation", "test"))
    final = tmp_path / "out" / "train" / "part-00000.parquet"
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["part-00000.parquet"]
    assert hashlib.sha256(final.read_bytes()).hexdigest() == info.sha256 and final.stat().st_size == info.bytes
    assert pq.read_table(final).column("input_ids").to_pylist() == [[1, 2]]
    assert info.manifest_entry() == {
        "path": "train/part-00000.parquet",
        "rows": 1,
        "bytes": info.bytes,
        "sha256": info.sha256,
    }


def test_accounting_identity_holds_and_lost_rows_are_caught():
    ops = [OpStats("read", 10, 9, 1), OpStats("dropEmpty", 9, 7), OpStats("exactDedup", 7, 5)]
    assert manifest.accounting(ops) == {"rowsIn": 10, "rowsOut": 5, "rowsDropped": 4, "rowsErrored": 1}
    with pytest.raises(AccountingError, match="exactDedup received 6 rows but dropEmpty passed on 7"):
        manifest.accounting([OpStats("read", 10, 9, 1), OpStats("dropEmpty", 9, 7), OpStats("exactDedup", 6, 5)])
    with pytest.raises(AccountingError, match="more rows than it received"):
        manifest.accounting([OpStats("read", 3, 4)])


def spec(**changes) -> DataPipelineSpec:
    wire = {"source": {"uris": ["/data"]}, "output": {"uri": "/out"}, **changes}
    return DataPipelineSpec.model_validate(wire)


def test_spec_hash_ignores_workers_and_scheduling_but_not_output_settings():
    base = manifest.spec_hash(spec())
    assert manifest.spec_hash(spec(resources={"workers": 8}, image="other:1", suspend=True)) == base
    assert manifest.spec_hash(spec(onError="skip")) != base
    assert manifest.spec_hash(spec(output={"uri": "/out", "compression": "snappy"})) != base


def test_manifest_follows_the_contract_and_status_fields_validate():
    from kubeforge_trainer.progress import check_status_fields

    shards = [{"path": "train/part-00000.parquet", "rows": 4, "bytes": 100, "sha256": "ab"}]
    document = manifest.build_manifest(
        task="languageModeling",
        sequence_length=8,
        vocab_size=300,
        pad_token_id=0,
        eos_token_id=1,
        labels=[],
        splits={"train": manifest.split_entry(shards, 32, 3)},
        schema={"input_ids": "list<int32>"},
        operations=[OpStats("read", 5, 4, 1), OpStats("exactDedup", 4, 3)],
        files_errored=0,
        errors=[],
        leakage={"crossSplitExactDuplicates": 0},
        spec_digest="s",
        input_digest="i",
        tokenizer_file="tokenizer.json",
    )
    for key in (
        "formatVersion",
        "task",
        "sequenceLength",
        "tokenizer",
        "vocabSize",
        "padTokenId",
        "eosTokenId",
        "labels",
        "splits",
        "schema",
        "operations",
        "accounting",
        "leakage",
        "specHash",
        "createdAt",
    ):
        assert key in document
    assert list(document["splits"]) == ["train", "validation", "test"]
    assert document["splits"]["validation"] == {
        "rows": 0,
        "tokens": 0,
        "documents": 0,
        "droppedTailTokens": 0,
        "shards": [],
    }
    json.dumps(document)
    status = manifest.status_fields(document, "/out", "/out/_manifest.json", "/out/tokenizer.json")
    assert check_status_fields("DataPipeline", status)["splits"]["train"] == {"rows": 4, "tokens": 32, "shards": 1}
    assert status["rowsIn"] == 5 and status["rowsDropped"] == 1 and status["rowsErrored"] == 1


def test_local_steps_report_rows_in_and_out():
    data = pa.table({TEXT: ["short", "a longer text"], RID: pa.array([0, 1], pa.int64())})
    step = Step(0, "lengthFilter", "lengthFilter", LengthFilterParams(min_chars=6))
    out, counts = stages.apply_local_steps(data, [step])
    assert out.column(TEXT).to_pylist() == ["a longer text"] and [c[:2] for c in counts] == [(2, 1)]
    assert counts[0][2] >= 0


def test_outlier_bounds_and_range_filter_keep_rows_without_a_value():
    values = np.array([10.0, 11, 9, 10, 12, 8, 10, 11, 9, 1000])
    low, high = stages.outlier_bounds(values, "iqr", 1.5)
    assert low < 8 and 12 < high < 1000
    _, high_z = stages.outlier_bounds(values, "zscore", 2.0)
    assert high_z < 1000
    t = pa.table({"v": pa.array([10.0, None, 1000.0])})
    assert stages.keep_in_range(t, "v", low, high).column("v").to_pylist() == [10.0, None]
