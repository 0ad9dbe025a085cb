"""Chat, preference and documents output, a tokenizer from a model directory and vocabulary extension, end to end on
a local Ray: real JSONL files in, shards, manifest and a tokenizer AutoTokenizer loads out."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tiny_tokenizers import save_model_tokenizer
from transformers import AutoTokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

IGNORE = -100


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


TOPICS = ["the lazy dog", "the quick fox", "the small cat", "the brown bird", "a slow turtle", "the old horse"]


def conversation(i: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "messages": [
            {"role": "system", "content": "you answer in one sentence"},
            {"role": "user", "content": f"<p>what does {topic} number {i} do?</p>"},
            {"role": "assistant", "content": f"{topic} number {i} jumps over the fence, mail me at a{i}@example.com"},
            {"role": "user", "content": "and then?"},
            {"role": "assistant", "content": f"then {topic} sleeps"},
        ]
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model_tokenizer(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def chat_corpus(tmp_path_factory) -> dict[str, Any]:
    """40 conversations, 5 exact copies of some, 6 rows sharing one prompt with different answers, 2 bad rows."""
    root = tmp_path_factory.mktemp("chat")
    rows = [conversation(i) for i in range(40)]
    copies = [conversation(i) for i in range(5)]
    shared = [{"prompt": "name an animal", "response": f"the {name}"} for name in ("dog", "fox", "cat", "bird", "cow")]
    shared.append({"instruction": "name an animal", "output": "the horse"})
    bad = [{"messages": [{"role": "user", "content": "no answer"}]}, {"text": "not a conversation"}]
    write_jsonl(root / "a.jsonl", rows[:20] + shared[:3] + bad)
    write_jsonl(root / "b.jsonl", rows[20:] + copies + shared[3:])
    return {"root": root, "rows": 53, "copies": 5, "bad": 2}


def chat_spec(corpus: dict[str, Any], model: Path, out: Path, **tokenizer: Any) -> dict[str, Any]:
    return {
        "source": {"uris": [str(corpus["root"])]},
        "steps": [{"stripHtml": {}}, {"maskPii": {}}, {"exactDedup": {}}],
        "tokenizer": {"fromModel": str(model), "task": "chat", "sequenceLength": 256, **tokenizer},
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
        "output": {"uri": str(out)},
        "onError": "skip",
    }


def read_split(out: Path, manifest: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for s in manifest["splits"][name]["shards"] for r in pq.read_table(out / s["path"]).to_pylist()]


def assert_accounted(manifest: dict[str, Any]) -> None:
    totals = manifest["accounting"]
    assert totals["rowsIn"] == totals["rowsOut"] + totals["rowsDropped"] + totals["rowsErrored"]
    ops = manifest["operations"]
    assert all(b["rowsIn"] == a["rowsOut"] for a, b in itertools.pairwise(ops))


def test_chat_from_a_model_directory(tmp_path, run_pipeline, make_pipeline, chat_corpus, model_dir):
    out = tmp_path / "out"
    model_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))  # changed at the end
    manifest, status = run_pipeline(make_pipeline("chat", chat_spec(chat_corpus, model_dir, out)))
    base = AutoTokenizer.from_pretrained(str(model_dir))
    assert manifest["task"] == "chat" and manifest["format"] == "tokenized"
    assert manifest["schema"] == {"input_ids": "list<int32>", "labels": "list<int32>"}
    source = manifest["tokenizerSource"]
    assert source["kind"] == "fromModel" and source["uri"] == str(model_dir) and len(source["sha256"]) == 64
    assert manifest["eosTokenId"] == base.eos_token_id == manifest["padTokenId"]
    assert manifest["bosTokenId"] == base.bos_token_id and manifest["vocabSize"] == len(base)
    written = AutoTokenizer.from_pretrained(str(out))  # what a TrainingJob loads
    assert written.chat_template == base.chat_template and written.eos_token_id == base.eos_token_id

    ops = {op["name"]: op for op in manifest["operations"]}
    assert ops["read"]["rowsErrored"] == chat_corpus["bad"]
    assert ops["exactDedup"]["rowsIn"] - ops["exactDedup"]["rowsOut"] == chat_corpus["copies"]
    assert ops["tokenize"]["rowsErrored"] == 0 and manifest["accounting"]["rowsIn"] == chat_corpus["rows"]
    assert_accounted(manifest)
    reasons = {e["reason"] for e in manifest["errors"]}
    assert "the conversation has no assistant message" in reasons

    splits = {name: read_split(out, manifest, name) for name in ("train", "validation", "test")}
    assert sum(len(rows) for rows in splits.values()) == ops["tokenize"]["rowsOut"] == 46
    assert status["rowsOut"] == 46
    where_shared = set()
    for name, rows in splits.items():
        for row in rows:
            text = written.decode(row["input_ids"])
            trained = written.decode([t for t in row["labels"] if t != IGNORE])
            assert len(row["input_ids"]) == len(row["labels"]) < 256
            assert "<p>" not in text and "@example.com" not in text
            assert "<EMAIL>" in text or "animal" in text
            assert "you answer" not in trained and "what does" not in trained and "and then?" not in trained
            assert trained.endswith("<|im_end|>\n")
            if "name an animal" in text:
                where_shared.add(name)
    assert len(where_shared) == 1  # the rows with the same prompt share one split

    # A rerun is a no-op while the model's tokenizer files are the same, and writes again when they change.
    again, _ = run_pipeline(make_pipeline("chat", chat_spec(chat_corpus, model_dir, out)))
    assert again["createdAt"] == manifest["createdAt"]
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 4096}))
    changed, _ = run_pipeline(make_pipeline("chat", chat_spec(chat_corpus, model_dir, out)))
    assert (
        changed["tokenizerSource"]["sha256"] != source["sha256"]
        and changed["inputFingerprint"] != manifest["inputFingerprint"]
    )


def test_preference_pairs_and_their_errored_rows(tmp_path, run_pipeline, make_pipeline, model_dir):
    rows = [
        {"prompt": f"what does {t} number {i} do?", "chosen": f"{t} jumps", "rejected": f"{t} flies away"}
        for i in range(24)
        for t in [TOPICS[i % len(TOPICS)]]
    ]
    rows += [{"prompt": "same answers", "chosen": "the dog", "rejected": "the dog"}] * 2
    rows += [{"prompt": " ", "chosen": "a", "rejected": "b"}]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    spec = {
        "source": {"uris": [str(tmp_path / "pairs.jsonl")]},
        "tokenizer": {"fromModel": str(model_dir), "task": "preference", "sequenceLength": 64},
        "split": {"train": 0.8, "validation": 0.2, "test": 0.0},
        "output": {"uri": str(tmp_path / "out")},
        "onError": "skip",
    }
    manifest, _ = run_pipeline(make_pipeline("prefs", spec))
    assert manifest["task"] == "preference"
    assert list(manifest["schema"]) == ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    ops = {op["name"]: op for op in manifest["operations"]}
    assert ops["read"]["rowsErrored"] == 1 and ops["tokenize"]["rowsErrored"] == 2
    reasons = [e["reason"] for e in manifest["errors"]]
    assert reasons.count("chosen and rejected are equal") == 2
    assert any("the prompt is empty" in r for r in reasons)
    assert_accounted(manifest)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    pairs = read_split(tmp_path / "out", manifest, "train") + read_split(tmp_path / "out", manifest, "validation")
    assert len(pairs) == 24
    for pair in pairs:
        chosen = tok.decode([t for t in pair["chosen_labels"] if t != IGNORE])
        rejected = tok.decode([t for t in pair["rejected_labels"] if t != IGNORE])
        assert chosen.endswith("jumps<|im_end|>\n") and rejected.endswith("flies away<|im_end|>\n")
        prompt = [
            t for t, label in zip(pair["chosen_input_ids"], pair["chosen_labels"], strict=True) if label == IGNORE
        ]
        assert pair["rejected_input_ids"][: len(prompt)] == prompt and "what does" in tok.decode(prompt)


def test_documents_output_writes_cleaned_rows_without_tokenizing(tmp_path, run_pipeline, make_pipeline, chat_corpus):
    out = tmp_path / "out"
    spec = chat_spec(chat_corpus, Path("/unused"), out)
    spec["tokenizer"] = {"task": "chat"}
    spec["output"] = {"uri": str(out), "format": "documents", "documentFormat": "jsonl"}
    manifest, status = run_pipeline(make_pipeline("docs", spec))
    assert manifest["format"] == "documents" and manifest["tokenizer"] is None and manifest["vocabSize"] is None
    assert not (out / "tokenizer.json").exists() and status["tokenizerUri"] is None
    paths = [s["path"] for entry in manifest["splits"].values() for s in entry["shards"]]
    assert paths and all(p.endswith(".jsonl") for p in paths)
    rows = [json.loads(line) for p in paths for line in (out / p).read_text().splitlines()]
    assert len(rows) == 46 and len({r["id"] for r in rows}) == 46
    assert manifest["schema"]["id"] == "string" and "messages" in manifest["schema"]
    texts = [m["content"] for r in rows for m in r["messages"]]
    assert not any("<p>" in t or "@example.com" in t for t in texts) and any("<EMAIL>" in t for t in texts)
    assert_accounted(manifest)


def test_vocabulary_extension_on_a_chinese_corpus(tmp_path, run_pipeline, make_pipeline, model_dir):
    sentences = [
        "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
        "深度学习使用多层神经网络来学习数据的表示。",
        "自然语言处理研究计算机与人类语言之间的相互作用。",
        "数据清洗和去重是训练语言模型之前的重要步骤。",
        "分词器把文本切分成模型能够理解的词元。",
    ]
    docs = [{"text": f"{sentences[i % 5]}第{i}条记录。{sentences[(i * 3 + 1) % 5]}"} for i in range(200)]
    write_jsonl(tmp_path / "zh.jsonl", docs)
    spec = {
        "source": {"uris": [str(tmp_path / "zh.jsonl")]},
        "tokenizer": {"fromModel": str(model_dir), "extend": {"vocabSize": 600}, "sequenceLength": 16},
        "split": {"train": 0.8, "validation": 0.1, "test": 0.1},
        "output": {"uri": str(tmp_path / "out")},
    }
    manifest, _ = run_pipeline(make_pipeline("extend", spec))
    base = AutoTokenizer.from_pretrained(str(model_dir))
    extended = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    added = manifest["tokenizerSource"]["extended"]["addedTokens"]
    assert added > 0 and manifest["vocabSize"] == len(extended) == len(base) + added
    assert all(extended.get_vocab()[t] == i for t, i in base.get_vocab().items())  # old ids unchanged
    held_out = "计算机从数据中学习语言模型的表示。"
    before = len(base.encode(held_out, add_special_tokens=False))
    after = len(extended.encode(held_out, add_special_tokens=False))
    print(f"held-out Chinese sentence: {before} -> {after} tokens ({after / before:.2f}x)")
    assert after / before < 0.5
    assert manifest["splits"]["train"]["tokens"] < sum(len(base.encode(d["text"])) for d in docs) * 0.5
