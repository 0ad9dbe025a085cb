"""The data step against a real S3 API (moto's server over HTTP): corpus read from a bucket, output written to one,
through pyarrow.fs with credentials and endpoint from the environment, as on a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from kubeforge_trainer import storage

# s3_endpoint first: the Ray workers inherit the AWS_* variables from the process that starts Ray.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("s3_endpoint", "ray_local")]

BUCKET = "kubeforge-data"
STEPS = [{"dropEmpty": {}}, {"stripHtml": {}}, {"lengthFilter": {"minChars": 20}}, {"exactDedup": {}}]


@pytest.fixture(scope="module")
def bucket_corpus(s3_endpoint: str, corpus: dict[str, Any]) -> str:
    """The corpus's files uploaded to s3://kubeforge-data/corpus; returns the glob of its JSONL files."""
    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=s3_endpoint).create_dir(BUCKET)
    storage.upload_dir(corpus["root"], f"s3://{BUCKET}/corpus")
    return f"s3://{BUCKET}/corpus/*.jsonl"


def spec(source: str, output: str) -> dict[str, Any]:
    return {
        "source": {"uris": [source], "format": "jsonl"},
        "steps": STEPS,
        "tokenizer": {"train": {"vocabSize": 300}, "task": "languageModeling", "sequenceLength": 64},
        "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "method": "random", "seed": 5},
        "output": {"uri": output, "targetShardSizeMB": 0.05},
        "resources": {"workers": 2},
    }


def shards(manifest: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {s["path"]: (s["rows"], s["sha256"]) for e in manifest["splits"].values() for s in e["shards"]}


def test_a_corpus_in_a_bucket_gives_the_same_shards_in_a_bucket_as_on_disk(
    bucket_corpus: str, corpus: dict[str, Any], make_pipeline, run_pipeline, tmp_path: Path
) -> None:
    remote, _ = run_pipeline(make_pipeline("remote", spec(bucket_corpus, f"s3://{BUCKET}/out")))
    local, _ = run_pipeline(make_pipeline("local", spec(str(corpus["root"] / "*.jsonl"), str(tmp_path / "out"))))

    assert remote["accounting"] == local["accounting"]
    assert remote["accounting"]["rowsIn"] == corpus["rows"]
    assert shards(remote) == shards(local) and shards(remote)
    # What the bucket holds is what the manifest lists (no temporary names left), the manifest last written.
    fs, root = storage.resolve(f"s3://{BUCKET}/out")
    stored = {
        info.path[len(root) + 1 :]: info.size
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if info.type == pafs.FileType.File
    }
    listed = {s["path"]: s["bytes"] for e in remote["splits"].values() for s in e["shards"]}
    assert {p: n for p, n in stored.items() if p in listed} == listed
    assert set(stored) - set(listed) == {"_manifest.json", remote["tokenizer"], "tokenizer_config.json"}
    assert json.loads(storage.read_text(f"s3://{BUCKET}/out/_manifest.json")) == remote


def objects(uri: str) -> dict[str, Any]:
    """path -> (size, modification time) of every object under uri."""
    fs, root = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return {i.path: (i.size, i.mtime) for i in infos if i.type == pafs.FileType.File}


def test_a_rerun_on_the_bucket_reuses_the_complete_output(bucket_corpus: str, make_pipeline, run_pipeline) -> None:
    resource = make_pipeline("again", spec(bucket_corpus, f"s3://{BUCKET}/again"))
    first, _ = run_pipeline(resource)
    written = objects(f"s3://{BUCKET}/again")
    second, status = run_pipeline(resource)
    assert second == first
    assert (
        objects(f"s3://{BUCKET}/again") == written and len(written) == len(shards(first)) + 3
    )  # manifest, tokenizer.json, tokenizer_config.json
    assert status["progress"] == "done"


def test_a_tokenizer_from_a_model_directory_in_a_bucket(
    s3_endpoint: str, make_pipeline, run_pipeline, tmp_path
) -> None:
    from kubeforge_trainer.data import hftokenizer
    from tiny_tokenizers import save_model_tokenizer
    from transformers import AutoTokenizer

    model = save_model_tokenizer(tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"not fetched")
    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=s3_endpoint).create_dir(BUCKET)
    storage.upload_dir(model, f"s3://{BUCKET}/model")
    local = hftokenizer.load_model_tokenizer(str(model), trust_remote_code=False)
    remote = hftokenizer.load_model_tokenizer(f"s3://{BUCKET}/model", trust_remote_code=False)
    assert remote.source["sha256"] == local.source["sha256"] and remote.digest == local.digest
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(4)
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipeline = {
        "source": {"uris": [str(tmp_path / "chat.jsonl")]},
        "tokenizer": {"fromModel": f"s3://{BUCKET}/model", "task": "chat", "sequenceLength": 64},
        "split": {"train": 1.0, "validation": 0.0, "test": 0.0},
        "output": {"uri": f"s3://{BUCKET}/chat-out"},
    }
    manifest, _ = run_pipeline(make_pipeline("chat-s3", pipeline))
    assert manifest["splits"]["train"]["rows"] == 4
    assert manifest["tokenizerSource"]["uri"] == f"s3://{BUCKET}/model"
    assert manifest["tokenizerSource"]["sha256"] == local.source["sha256"]
    written = storage.download_dir(f"s3://{BUCKET}/chat-out", tmp_path / "downloaded")
    assert AutoTokenizer.from_pretrained(str(written)).chat_template == local.chat_template
