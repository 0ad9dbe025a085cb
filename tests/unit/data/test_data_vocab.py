"""A tokenizer from a model directory (tokenizer.fromModel) and vocabulary extension (tokenizer.extend)."""

from __future__ import annotations

import json

import pytest
from kubeforge_trainer.data import hftokenizer, vocab
from kubeforge_trainer.data.errors import DataPipelineError
from tiny_tokenizers import ENGLISH, build, save_model_tokenizer
from tokenizers import Tokenizer
from transformers import AutoTokenizer

CHINESE_TRAIN = [
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "深度学习使用多层神经网络来学习数据的表示。",
    "自然语言处理研究计算机与人类语言之间的相互作用。",
    "数据清洗和去重是训练语言模型之前的重要步骤。",
    "分词器把文本切分成模型能够理解的词元。",
    "训练数据越多，语言模型学到的知识就越丰富。",
] * 20
CHINESE_HELD_OUT = [
    "计算机从数据中学习语言模型的表示。",
    "人工智能研究训练数据和神经网络。",
    "分词器是自然语言处理的重要步骤。",
]


def test_from_model_takes_special_tokens_from_the_config_and_hashes_the_files(tmp_path):
    directory = save_model_tokenizer(tmp_path / "model")
    (directory / "model.safetensors").write_bytes(b"weights are never fetched to load the tokenizer")
    bundle = hftokenizer.load_model_tokenizer(str(directory), trust_remote_code=False)
    hf = AutoTokenizer.from_pretrained(str(directory))
    assert bundle.token_id("eos_token") == hf.eos_token_id and bundle.token_id("bos_token") == hf.bos_token_id
    assert bundle.token_id("pad_token") == hf.eos_token_id  # no pad token: pads with eos
    assert bundle.chat_template == hf.chat_template
    assert hftokenizer.tokenizer(bundle).encode("the lazy dog").ids == hf.encode(
        "the lazy dog", add_special_tokens=False
    )
    source = hftokenizer.describe(bundle)
    assert source["kind"] == "fromModel" and source["uri"] == str(directory) and len(source["sha256"]) == 64
    again = hftokenizer.load_model_tokenizer(f"file://{directory}", trust_remote_code=False)
    assert again.source["sha256"] == source["sha256"]
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<s>"}))
    changed = hftokenizer.load_model_tokenizer(str(directory), trust_remote_code=False)
    assert changed.source["sha256"] != source["sha256"] and changed.token_id("eos_token") == hf.bos_token_id


def test_from_model_errors_name_the_field(tmp_path):
    with pytest.raises(DataPipelineError, match=r"spec.tokenizer.fromModel: no tokenizer files in"):
        hftokenizer.load_model_tokenizer(str(tmp_path), trust_remote_code=False)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataPipelineError, match=r"spec.tokenizer.fromModel: cannot load a tokenizer from"):
        hftokenizer.load_model_tokenizer(str(tmp_path), trust_remote_code=False)


def test_the_written_tokenizer_loads_with_auto_tokenizer(tmp_path):
    bundle = hftokenizer.load_model_tokenizer(str(save_model_tokenizer(tmp_path / "model")), trust_remote_code=False)
    names = hftokenizer.save_pretrained(bundle, str(tmp_path / "out"))
    assert "tokenizer.json" in names and "tokenizer_config.json" in names
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert loaded.eos_token == "<|endoftext|>" and loaded.chat_template == bundle.chat_template
    assert (
        loaded.encode("the lazy dog", add_special_tokens=False)
        == hftokenizer.tokenizer(bundle).encode("the lazy dog", add_special_tokens=False).ids
    )


def _tokens(tok: Tokenizer, texts: list[str]) -> int:
    return sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)


@pytest.mark.parametrize(("style", "model"), [("bytelevel", "bpe"), ("metaspace", "bpe"), ("unigram", "unigram")])
def test_extension_keeps_old_ids_and_shortens_chinese(style, model):
    base = build(ENGLISH, style)
    trained = vocab.train_like(base.to_str(), [CHINESE_TRAIN], 600, 2)
    merged_json, added = vocab.merge(base.to_str(), trained)
    merged = Tokenizer.from_str(merged_json)
    old, new = base.get_vocab(with_added_tokens=True), merged.get_vocab(with_added_tokens=True)
    assert added > 0 and all(new[token] == i for token, i in old.items())
    assert sorted(set(new.values()) - set(old.values())) == list(range(len(old), len(old) + added))
    for text in ENGLISH[:20]:  # text the base already knew encodes exactly as before
        assert merged.encode(text).ids == base.encode(text).ids
    for text in CHINESE_HELD_OUT:
        assert merged.decode(merged.encode(text).ids).replace(" ", "") == text.replace(" ", "")
    ratio = _tokens(merged, CHINESE_HELD_OUT) / _tokens(base, CHINESE_HELD_OUT)
    print(f"{style}: held-out Chinese tokens after/before extension = {ratio:.3f} ({added} tokens added)")
    assert ratio < 0.5  # measured 0.18 (byte-level BPE), 0.17 (SentencePiece-style BPE), 0.28 (Unigram)


def test_extension_refuses_a_model_of_another_kind():
    base = build(ENGLISH, "bytelevel").to_str()
    with pytest.raises(
        DataPipelineError, match=r"spec.tokenizer.extend.model: unigram tokens cannot be added to a BPE"
    ):
        vocab.base_kind(base, "unigram")
