"""The data step end to end on a local Ray: real files in, sharded Parquet, tokenizer and manifest out."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeforge.constants import ENV_PVC_ROOT
from kubeforge_trainer.data import DataPipelineError, pipeline, writer
from tokenizers import Tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

SEQ = 64
TEXT_STEPS = [
    {"dropEmpty": {}},
    {"stripHtml": {}},
    {"normalizeUnicode": {"form": "NFKC"}},
    {"collapseWhitespace": {}},
    {"maskPii": {}},
    {"lengthFilter": {"minChars": 20}},
    {"qualityFilter": {"minAlnumRatio": 0.5, "maxRepeatedLineRatio": 0.5}},
    {"scriptFilter": {"scripts": ["latin"], "minRatio": 0.5}},
    {"exactDedup": {}},
    {"nearDedup": {"threshold": 0.7, "numPerm": 64, "bands": 16, "shingleSize": 3}},
]


def lm_spec(uris: list[str], out: Path, **changes: Any) -> dict[str, Any]:
    spec = {
        "source": {"uris": uris, "format": "jsonl"},
        "steps": TEXT_STEPS,
        "tokenizer": {"train": {"vocabSize": 400}, "task": "languageModeling", "sequenceLength": SEQ},
        "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "method": "random", "seed": 3},
        "output": {"uri": str(out), "targetShardSizeMB": 0.05},
        "resources": {"workers": 2},
    }
    spec.update(changes)
    return spec


def shard_digests(out: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """path -> sha256 of every shard the manifest lists, after checking size and checksum against the file."""
    digests = {}
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            data = (out / shard["path"]).read_bytes()
            assert len(data) == shard["bytes"]
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
            digests[shard["path"]] = shard["sha256"]
    return digests


def split_table(out: Path, manifest: dict[str, Any], name: str) -> pa.Table:
    shards = [pq.read_table(out / s["path"]) for s in manifest["splits"][name]["shards"]]
    return pa.concat_tables(shards) if shards else pa.table({"input_ids": pa.array([], pa.list_(pa.int32()))})


def operation(manifest: dict[str, Any], name: str) -> dict[str, int]:
    return next(op for op in manifest["operations"] if op["name"] == name)


def assert_accounted(manifest: dict[str, Any]) -> None:
    totals = manifest["accounting"]
    assert totals["rowsIn"] == totals["rowsOut"] + totals["rowsDropped"] + totals["rowsErrored"]
    ops = manifest["operations"]
    for before, after in itertools.pairwise(ops):
        assert after["rowsIn"] == before["rowsOut"]
    documents = sum(s["documents"] for s in manifest["splits"].values())
    assert documents == totals["rowsOut"]


@pytest.fixture(scope="module")
def lm_run(corpus, tmp_path_factory) -> dict[str, Any]:
    """The language-modelling pipeline over the three JSONL files, read in small chunks (many blocks)."""
    from kubeforge.api import DataPipeline
    from kubeforge_trainer.data import run_datapipeline
    from kubeforge_trainer.progress import FileStatusReporter, read_status_file

    out = tmp_path_factory.mktemp("lm") / "data"
    status = tmp_path_factory.mktemp("status")
    resource = DataPipeline.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "DataPipeline",
            "metadata": {"name": "lm", "namespace": "default"},
            "spec": lm_spec([str(corpus["root"])], out),
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "chunk_bytes", lambda total, cores: 16 * 1024)
        reporter = FileStatusReporter("DataPipeline", "lm", status, interval=0.0)
        manifest = run_datapipeline(resource, reporter)
    return {
        "out": out,
        "manifest": manifest,
        "resource": resource,
        "status": read_status_file(status / "DataPipeline" / "lm.json"),
    }


def test_lm_pipeline_writes_the_contract_layout(lm_run):
    out, manifest = lm_run["out"], lm_run["manifest"]
    assert json.loads((out / "_manifest.json").read_text()) == manifest
    assert manifest["formatVersion"] == 1 and manifest["task"] == "languageModeling"
    assert manifest["sequenceLength"] == SEQ and manifest["tokenizer"] == "tokenizer.json"
    assert (manifest["padTokenId"], manifest["eosTokenId"]) == (0, 1)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == manifest["vocabSize"] <= 400
    assert manifest["schema"] == {"input_ids": "list<int32>"}
    shard_digests(out, manifest)
    train = split_table(out, manifest, "train")
    assert train.schema.field("input_ids").type == pa.list_(pa.int32())
    assert {len(r) for r in train.column("input_ids").to_pylist()} == {SEQ}
    assert len(manifest["splits"]["train"]["shards"]) > 1  # the 0.05 MB target cuts several shards
    for name, entry in manifest["splits"].items():
        rows = split_table(out, manifest, name).num_rows
        assert entry["rows"] == rows and entry["tokens"] == rows * SEQ
        assert entry["droppedTailTokens"] < SEQ
    text = tokenizer.decode(train.column("input_ids")[0].as_py())
    assert len(text) > 50
    assert not list(out.rglob(f"*{writer.TMP_MARKER}*"))


def test_every_row_is_accounted_for_and_duplicates_are_removed_across_files_and_blocks(lm_run, corpus):
    manifest = lm_run["manifest"]
    assert_accounted(manifest)
    assert manifest["accounting"]["rowsIn"] == corpus["rows"]
    assert manifest["accounting"]["rowsErrored"] == 0
    assert operation(manifest, "dropEmpty") == {"name": "dropEmpty", "rowsIn": 265, "rowsOut": 255, "rowsErrored": 0}
    assert operation(manifest, "lengthFilter")["rowsOut"] == 250
    exact = operation(manifest, "exactDedup")
    assert exact["rowsIn"] - exact["rowsOut"] == corpus["exact"]
    near = operation(manifest, "nearDedup")
    assert corpus["near"] - 2 <= near["rowsIn"] - near["rowsOut"] <= corpus["near"] + 2
    assert manifest["leakage"]["crossSplitExactDuplicates"] == 0
    documents = [manifest["splits"][s]["documents"] for s in ("train", "validation", "test")]
    total = sum(documents)
    assert documents[1] == round(total * 0.1) and documents[2] == total - documents[0] - documents[1]


def test_html_and_pii_are_gone_from_the_tokens(lm_run):
    out, manifest = lm_run["out"], lm_run["manifest"]
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "".join(
        tokenizer.decode(ids, skip_special_tokens=False)
        for name in manifest["splits"]
        for ids in split_table(out, manifest, name).column("input_ids").to_pylist()
    )
    assert "<div>" not in text and "<p>" not in text
    assert "maintainer@example.org" not in text and "<EMAIL>" in text


def test_status_carries_progress_fields_only(lm_run):
    status, manifest, out = lm_run["status"], lm_run["manifest"], lm_run["out"]
    assert status["progress"] == "done"
    assert status["outputUri"] == str(out)
    assert status["manifestUri"] == f"{out}/_manifest.json" and status["tokenizerUri"] == f"{out}/tokenizer.json"
    for key in ("rowsIn", "rowsOut", "rowsDropped", "rowsErrored"):
        assert status[key] == manifest["accounting"][key]
    assert status["operations"] == manifest["operations"]
    assert status["splits"]["train"]["shards"] == len(manifest["splits"]["train"]["shards"])
    assert status["shards"] == sum(s["shards"] for s in status["splits"].values())
    assert "phase" not in status and "conditions" not in status


def test_rerun_is_idempotent_and_the_output_does_not_depend_on_block_boundaries(lm_run, run_pipeline, tmp_path):
    out, manifest = lm_run["out"], lm_run["manifest"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again, status = run_pipeline(lm_run["resource"])
    assert again == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    assert status["progress"] == "done"

    # Default chunking (a few big blocks instead of many small ones) into another directory: the same bytes.
    other = tmp_path / "other"
    resource = lm_run["resource"].model_copy(deep=True)
    resource.spec.output.uri = str(other)
    fresh, _ = run_pipeline(resource)
    assert shard_digests(other, fresh) == shard_digests(out, manifest)
    assert (other / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    assert fresh["operations"] == manifest["operations"]


def test_dedups_that_leave_their_dropped_rows_in_the_blocks_give_the_same_output(
    lm_run, corpus, run_pipeline, make_pipeline, tmp_path
):
    # In lm_run both dedups come last, so neither makes new blocks: their dropped rows stay in the read blocks and
    # every later task (MinHash's map, split keys, tokenizer training, tokenize) drops them as it reads. A row step
    # after each dedup makes them write filtered blocks instead; the output must not change.
    out, manifest = lm_run["out"], lm_run["manifest"]
    steps = []
    for step in TEXT_STEPS:
        steps.append(step)
        if next(iter(step)) in ("exactDedup", "nearDedup"):
            steps.append({"dropEmpty": {}})
    resource = make_pipeline("materialized", lm_spec([str(corpus["root"])], tmp_path / "o", steps=steps))
    materialized, _ = run_pipeline(resource)
    assert_accounted(materialized)
    assert shard_digests(tmp_path / "o", materialized) == shard_digests(out, manifest)
    assert (tmp_path / "o" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    counts = {op["name"]: op for op in materialized["operations"] if op["name"] != "dropEmpty"}
    assert counts == {op["name"]: op for op in manifest["operations"] if op["name"] != "dropEmpty"}
    assert operation(manifest, "exactDedup")["rowsOut"] < operation(manifest, "exactDedup")["rowsIn"]
    assert operation(manifest, "nearDedup")["rowsOut"] < operation(manifest, "nearDedup")["rowsIn"]


def test_a_crashed_commit_leaves_no_manifest_and_the_next_run_completes(lm_run, run_pipeline, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    resource = lm_run["resource"].model_copy(deep=True)
    resource.spec.output.uri = str(out)
    real_rename = writer.rename
    calls = []

    def dying_rename(fs, source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError("disk gone (simulated crash in the middle of the commit)")
        real_rename(fs, source, target)

    monkeypatch.setattr(writer, "rename", dying_rename)
    with pytest.raises(OSError, match="simulated crash"):
        run_pipeline(resource)
    assert not (out / "_manifest.json").exists()
    assert list(out.rglob(f"*{writer.TMP_MARKER}*"))  # debris of the crashed run
    monkeypatch.setattr(writer, "rename", real_rename)

    manifest, _ = run_pipeline(resource)
    assert (out / "_manifest.json").exists()
    assert not list(out.rglob(f"*{writer.TMP_MARKER}*"))
    assert shard_digests(out, manifest) == shard_digests(lm_run["out"], lm_run["manifest"])
    listed = {s["path"] for e in manifest["splits"].values() for s in e["shards"]}
    assert {str(p.relative_to(out)) for p in out.rglob("*.parquet")} == listed


def test_bad_input_fails_with_one_line_or_is_counted_under_skip(tmp_path, run_pipeline, make_pipeline, corpus):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(corpus["files"][0], bad / "a.jsonl")
    (bad / "b.jsonl").write_bytes(
        b'{"text": "a fine document with enough characters in it"}\n'
        b"{broken json\n"
        b'{"text": "invalid \xff utf-8 bytes in this one here"}\n'
        b'{"text": ["not", "a", "string"]}\n'
    )
    (bad / "c.jsonl.gz").write_bytes(b"not gzip at all")
    spec = lm_spec([str(bad)], tmp_path / "out", steps=[{"dropEmpty": {}}, {"exactDedup": {}}])
    with pytest.raises(DataPipelineError) as failure:
        run_pipeline(make_pipeline("strict", spec))
    message = str(failure.value)
    assert message.startswith("DataPipeline default/strict: spec.source")
    assert "b.jsonl row 2: not valid JSON" in message or "c.jsonl.gz: cannot read" in message
    assert "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "out" / "_manifest.json").exists()

    manifest, status = run_pipeline(make_pipeline("lenient", {**spec, "onError": "skip"}))
    assert manifest["accounting"]["rowsErrored"] == 3 and manifest["accounting"]["filesErrored"] == 1
    assert status["rowsErrored"] == 3
    assert operation(manifest, "read") == {"name": "read", "rowsIn": 119, "rowsOut": 116, "rowsErrored": 3}
    assert_accounted(manifest)
    reasons = sorted(e["reason"] for e in manifest["errors"])
    assert len(reasons) == 4 and any("invalid UTF-8" in r for r in reasons) and any("cannot read" in r for r in reasons)


def test_csv_classification_with_label_rules_and_a_stratified_split(tmp_path, run_pipeline, make_pipeline):
    rows = ["text,label"]
    for i in range(60):
        rows.append(f'"doc-{i} the cat sat on the mat and purred for a while, number {i}",cats')
        rows.append(f'"doc-{i + 100} the dog barked at the postman all morning long, number {i}",')
    rows.append('"doc-999 a parrot repeated every word it heard in the kitchen",birds')
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "source": {"uris": [str(tmp_path / "labelled.csv")], "format": "csv", "labelField": "label"},
        "steps": [
            {"dropEmpty": {}},
            {"label": {"rules": [{"label": "dogs", "keywords": ["dog", "postman"]}], "default": "other"}},
        ],
        "tokenizer": {"train": {"vocabSize": 300}, "task": "classification", "sequenceLength": 12},
        "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "method": "stratified", "seed": 5},
        "output": {"uri": str(tmp_path / "out"), "compression": "snappy"},
    }
    manifest, _ = run_pipeline(make_pipeline("classify", spec))
    out = tmp_path / "out"
    assert manifest["task"] == "classification" and manifest["labels"] == ["birds", "cats", "dogs"]
    assert manifest["schema"] == {"input_ids": "list<int32>", "label": "int32", "label_name": "string"}
    tables = {name: split_table(out, manifest, name) for name in ("train", "validation", "test")}
    counts = {name: t.group_by("label_name").aggregate([("label", "count")]).to_pylist() for name, t in tables.items()}
    per_label = {n: {r["label_name"]: r["label_count"] for r in c} for n, c in counts.items()}
    assert per_label["train"] == {"cats": 48, "dogs": 48, "birds": 1}
    assert per_label["validation"] == {"cats": 6, "dogs": 6} and per_label["test"] == {"cats": 6, "dogs": 6}
    train = tables["train"].to_pylist()
    assert all(manifest["labels"][r["label"]] == r["label_name"] for r in train)
    assert all(0 < len(r["input_ids"]) <= 12 for r in train)
    assert (
        pq.ParquetFile(out / manifest["splits"]["train"]["shards"][0]["path"])
        .metadata.row_group(0)
        .column(0)
        .compression
        == "SNAPPY"
    )
    assert_accounted(manifest)


def test_parquet_outliers_and_a_hash_split_that_is_stable_when_data_grows(
    tmp_path, run_pipeline, make_pipeline, find_doc_ids
):
    def write(path: Path, start: int, stop: int) -> None:
        ids = list(range(start, stop))
        prices = [10.0 + (i % 7) for i in ids]
        if start == 0:
            prices[3] = 10_000.0  # the outlier
        texts = [f"doc-{i} listing of an item for sale in good condition" for i in ids]
        pq.write_table(
            pa.table({"body": texts, "sku": [f"sku-{i}" for i in ids], "price": prices, "kind": ["a"] * len(ids)}),
            path,
        )

    data = tmp_path / "data"
    data.mkdir()
    write(data / "p0.parquet", 0, 80)

    def spec(out: Path) -> dict[str, Any]:
        return {
            "source": {"uris": [str(data)], "format": "parquet", "textField": "body", "labelField": "kind"},
            "steps": [{"outlierFilter": {"column": "price", "method": "iqr", "threshold": 1.5}}],
            "tokenizer": {"train": {"vocabSize": 300}, "task": "classification", "sequenceLength": 8},
            "split": {"method": "hash", "keyField": "sku", "train": 0.6, "validation": 0.2, "test": 0.2},
            "output": {"uri": str(out)},
        }

    def assignment(manifest: dict[str, Any], out: Path) -> dict[str, str]:
        tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
        result = {}
        for name in ("train", "validation", "test"):
            texts = [tokenizer.decode(r) for r in split_table(out, manifest, name).column("input_ids").to_pylist()]
            result.update(dict.fromkeys(find_doc_ids(texts), name))
        return result

    first, _ = run_pipeline(make_pipeline("hash-1", spec(tmp_path / "out1")))
    assert operation(first, "outlierFilter") == {"name": "outlierFilter", "rowsIn": 80, "rowsOut": 79, "rowsErrored": 0}
    before = assignment(first, tmp_path / "out1")
    assert len(before) == 79 and "doc-3" not in before
    write(data / "p1.parquet", 80, 160)
    second, _ = run_pipeline(make_pipeline("hash-2", spec(tmp_path / "out2")))
    after = assignment(second, tmp_path / "out2")
    assert len(after) == 159
    assert {k: after[k] for k in before} == before


def test_time_split_puts_the_oldest_documents_in_train(tmp_path, run_pipeline, make_pipeline, find_doc_ids):
    records = [
        {"text": f"doc-{i} news story about the weather on day {i}", "t": i, "published": f"2024-02-{1 + i % 28:02d}"}
        for i in range(40)
    ]
    for r in records:
        r["published"] += f"T{r['t'] // 28:02d}:00:00Z"
    (tmp_path / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    spec = {
        "source": {"uris": [str(tmp_path / "news.jsonl")], "timeField": "published", "labelField": "t"},
        "tokenizer": {"train": {"vocabSize": 300}, "task": "classification", "sequenceLength": 8},
        "split": {"method": "time", "train": 0.5, "validation": 0.25, "test": 0.25},
        "output": {"uri": str(tmp_path / "out")},
    }
    manifest, _ = run_pipeline(make_pipeline("news", spec))
    out = tmp_path / "out"
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    stamp = {f"doc-{r['t']}": r["published"] for r in records}
    newest = {}
    oldest = {}
    for name in ("train", "validation", "test"):
        texts = [tokenizer.decode(r) for r in split_table(out, manifest, name).column("input_ids").to_pylist()]
        times = [stamp[i] for i in find_doc_ids(texts)]
        assert len(times) == {"train": 20, "validation": 10, "test": 10}[name]
        newest[name], oldest[name] = max(times), min(times)
    assert newest["train"] < oldest["validation"] and newest["validation"] < oldest["test"]


def test_builtin_corpus_has_natural_duplicates(tmp_path, run_pipeline, make_pipeline):
    spec = {
        "source": {"builtin": {"name": "system-docs", "maxDocuments": 800}},
        "steps": [
            {"dropEmpty": {}},
            {"collapseWhitespace": {}},
            {"lengthFilter": {"minChars": 32}},
            {"exactDedup": {}},
        ],
        "tokenizer": {"train": {"vocabSize": 512}, "sequenceLength": 32},
        "output": {"uri": str(tmp_path / "out")},
    }
    manifest, _ = run_pipeline(make_pipeline("builtin", spec))
    assert manifest["accounting"]["rowsIn"] == 800
    exact = operation(manifest, "exactDedup")
    assert exact["rowsIn"] > exact["rowsOut"]
    assert_accounted(manifest)


def test_pvc_text_files_with_a_given_tokenizer(tmp_path, run_pipeline, make_pipeline, lm_run, monkeypatch, docstrings):
    volume = tmp_path / "volumes" / "corpus-claim" / "docs"
    volume.mkdir(parents=True)
    for i, doc in enumerate(docstrings[:30]):
        (volume / f"{i:03d}.txt").write_text(doc)
    with gzip.open(volume / "extra.txt.gz", "wt") as f:
        f.write(docstrings[30])
    monkeypatch.setenv(ENV_PVC_ROOT, str(tmp_path / "volumes"))
    given = lm_run["out"] / "tokenizer.json"
    spec = {
        "source": {"pvc": {"claimName": "corpus-claim", "path": "docs"}, "format": "text", "textMode": "file"},
        "tokenizer": {"path": str(given), "sequenceLength": 16},
        "split": {"train": 0.9, "validation": 0.1, "test": 0.0},
        "output": {"uri": f"file://{tmp_path / 'out'}"},
    }
    manifest, _ = run_pipeline(make_pipeline("pvc", spec))
    assert manifest["accounting"]["rowsIn"] == 31
    # Written in save_pretrained form (pretty-printed): the same tokenizer, not the same bytes as the given file.
    assert (
        Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).to_str()
        == Tokenizer.from_file(str(given)).to_str()
    )
    assert manifest["splits"]["test"]["rows"] == 0 and manifest["splits"]["test"]["shards"] == []
    assert manifest["splits"]["validation"]["documents"] == 3


def test_whole_dataset_steps_chain_in_any_order_with_row_steps_between(
    tmp_path, run_pipeline, make_pipeline, find_doc_ids
):
    # Each task that makes a block also runs the next whole-dataset step's map side on it; here near dedup comes
    # first, a row filter sits between it and exact dedup (raw text), and an outlier filter follows.
    words = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "islet", "juniper"]

    def doc(i: int) -> str:
        return f"doc-{i} " + " ".join(words[(i * 7 + k) % 10] + str(i) for k in range(8))

    first = [{"text": doc(i), "price": 10.0 + i % 5, "kind": "a"} for i in range(40)]
    first += [{"text": f"tiny {i}", "price": 12.0, "kind": "a"} for i in range(3)]  # under minChars
    first.append({"text": doc(40), "price": 1e6, "kind": "a"})  # the outlier
    second = [{"text": doc(i).upper(), "price": 12.0, "kind": "a"} for i in range(5)]  # near (same shingles)
    # No words, so no shingles: only exact dedup sees these; it compares raw text, so the double space is distinct.
    second += [{"text": "!!!! ???? !!!!", "price": 12.0, "kind": "b"}] * 3 + [
        {"text": "!!!!  ???? !!!!", "price": 12.0, "kind": "b"}
    ]
    for name, records in (("a.jsonl", first), ("b.jsonl", second)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    steps = [
        {"nearDedup": {"threshold": 0.9, "numPerm": 32, "bands": 8, "shingleSize": 3}},
        {"lengthFilter": {"minChars": 10}},
        {"exactDedup": {"normalize": False}},
        {"outlierFilter": {"column": "price", "method": "iqr", "threshold": 1.5}},
        {"dropEmpty": {}},
    ]
    spec = {
        "source": {"uris": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], "labelField": "kind"},
        "steps": steps,
        "tokenizer": {"train": {"vocabSize": 300}, "task": "classification", "sequenceLength": 16},
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25, "method": "random", "seed": 1},
        "output": {"uri": str(tmp_path / "out")},
    }
    manifest, _ = run_pipeline(make_pipeline("chain", spec))
    assert_accounted(manifest)
    counts = {op["name"]: (op["rowsIn"], op["rowsOut"]) for op in manifest["operations"]}
    assert counts == {
        "read": (53, 53),
        "nearDedup": (53, 48),
        "lengthFilter": (48, 45),
        "exactDedup": (45, 43),
        "outlierFilter": (43, 42),
        "dropEmpty": (42, 42),
    }
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    texts = [
        tokenizer.decode(ids)
        for name in ("train", "validation", "test")
        for ids in split_table(tmp_path / "out", manifest, name).column("input_ids").to_pylist()
    ]
    assert sorted(find_doc_ids(texts)) == sorted(f"doc-{i}" for i in range(40))  # the lower-case originals stay
    assert sum("????" in t for t in texts) == 2
