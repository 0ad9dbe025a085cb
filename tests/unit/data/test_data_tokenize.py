"""Tokenizer training and loading, special tokens, packing and truncation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from kubeforge_trainer.data import hftokenizer, stages, tokenize
from kubeforge_trainer.data.columns import LABEL, RID, TEXT
from kubeforge_trainer.data.errors import DataPipelineError
from tokenizers import Tokenizer, models, pre_tokenizers

CORPUS = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(200)] + [
    "pack my box with five dozen liquor jugs"
] * 20


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return tokenize.train_bpe([CORPUS[:100], CORPUS[100:]], vocab_size=300, min_frequency=2)


def test_trained_bpe_has_pad_0_eos_1_and_round_trips_text(trained):
    assert tokenize.special_token_ids(trained) == (0, 1)
    assert 258 < trained.get_vocab_size() <= 300
    ids = trained.encode("the quick brown fox").ids
    assert trained.decode(ids) == "the quick brown fox"
    assert len(ids) < len("the quick brown fox")  # merges were learned


def test_training_is_deterministic_whatever_the_batching():
    a = tokenize.train_bpe([CORPUS], 300, 2).to_str()
    b = tokenize.train_bpe([[t] for t in CORPUS], 300, 2).to_str()
    assert a == b


def test_load_from_file_or_directory_and_bad_paths(tmp_path, trained):
    trained.save(str(tmp_path / "tokenizer.json"))
    assert tokenize.load_tokenizer(str(tmp_path / "tokenizer.json")).to_str() == trained.to_str()
    assert tokenize.load_tokenizer(f"file://{tmp_path}").to_str() == trained.to_str()
    with pytest.raises(DataPipelineError, match=r"spec.tokenizer.path: no tokenizer file at"):
        tokenize.load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataPipelineError, match=r"spec.tokenizer.path: .*bad.json is not a tokenizers file"):
        tokenize.load_tokenizer(str(tmp_path / "bad.json"))


def test_special_tokens_are_found_by_common_names_or_added():
    gpt2_like = Tokenizer(models.BPE())
    gpt2_like.pre_tokenizer = pre_tokenizers.ByteLevel()
    gpt2_like.add_special_tokens(["<|endoftext|>"])
    pad, eos = tokenize.special_token_ids(gpt2_like)
    assert gpt2_like.id_to_token(eos) == "<|endoftext|>"
    assert gpt2_like.id_to_token(pad) == tokenize.PAD_TOKEN


def test_eos_after_every_document_then_exact_packing(trained):
    ids = tokenize.encode(trained, ["the quick", "", "lazy dog"])
    stream = tokenize.with_eos(ids, 1)
    expected = [*ids[0].as_py(), 1, 1, *ids[2].as_py(), 1]
    assert stream.tolist() == expected and stream.dtype == np.int32
    packed = tokenize.pack(stream[: (len(stream) // 2) * 2], 2)
    assert packed.type == pa.list_(pa.int32()) and all(len(r) == 2 for r in packed.to_pylist())
    with pytest.raises(ValueError):
        tokenize.pack(np.arange(5, dtype=np.int32), 2)
    assert [len(r) for r in tokenize.truncate(ids, 1).to_pylist()] == [1, 0, 1]


def test_tokenize_block_routes_rows_to_their_splits(trained):
    block = pa.table(
        {
            TEXT: ["the quick brown fox", "lazy dog", None, "pack my box"],
            RID: pa.array(range(4), pa.int64()),
            LABEL: ["a", "b", "a", "b"],
        }
    )
    assigned = np.array([0, 2, 0, 1], dtype=np.int8)
    bundle = hftokenizer.from_tokenizers(trained, "<pad>", "<eos>", {"kind": "trained"})
    meta, outputs = stages.tokenize_block(block, assigned, bundle, "languageModeling", {"eos": 1})
    assert [meta[s]["documents"] for s in ("train", "validation", "test")] == [2, 1, 1]
    assert outputs[0].tolist() == [*trained.encode("the quick brown fox").ids, 1, 1]
    meta, outputs = stages.tokenize_block(
        block, assigned, bundle, "classification", {"sequence_length": 2, "labels": ["a", "b"]}
    )
    train = outputs[0]
    assert train.column("label").to_pylist() == [0, 0] and train.column("label_name").to_pylist() == ["a", "a"]
    assert [len(r) for r in train.column("input_ids").to_pylist()] == [2, 0]
    assert meta["train"]["tokens"] == 2


def test_encoding_piece_by_piece_gives_exactly_the_tokenizer_ids(trained):
    import random

    assert tokenize.splits_at_spaces(trained)
    rng = random.Random(0)
    alphabet = [
        *"abc XYZ  \t\n\r.,;'\"-()0123456789",
        "\u00a0",
        "\u3000",
        "é",
        "日本",
        "'s",
        " 's",
        "<eos>",
        "😀",
        "\x00",
    ]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    texts += ["it's   a test.\n\n  Next\tline", "", " ", "  lead", "trail  ", "a\u00a0b", "x \u00a0y", *CORPUS[:50]]
    expected = [e.ids for e in trained.encode_batch(texts, add_special_tokens=False)]
    assert tokenize.encode(trained, texts).to_pylist() == expected


def test_other_tokenizers_are_encoded_whole():
    from tokenizers import normalizers

    word_level = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not tokenize.splits_at_spaces(word_level)
    assert tokenize.encode(word_level, ["a b c"]).to_pylist() == [[0, 1, 2]]
    lowered = tokenize.train_bpe([CORPUS], 300, 2)
    lowered.normalizer = normalizers.Lowercase()
    assert not tokenize.splits_at_spaces(lowered)


def test_words_kept_from_earlier_blocks_give_each_tokenizer_its_own_ids(trained, monkeypatch):
    other = tokenize.train_bpe([["alpha beta gamma delta epsilon"] * 50], 280, 2)
    blocks = [
        [f"alpha beta {i} gamma" for i in range(50)],
        ["beta gamma delta", " alpha  beta", "gamma\u00a0beta", "", "epsilon!"],
    ]
    for tokenizer in (trained, other, trained):
        for texts in blocks:
            expected = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
            assert tokenize.encode(tokenizer, texts).to_pylist() == expected
    # The store is bounded: a block that would outgrow it starts it afresh, with the same ids.
    monkeypatch.setattr(tokenize._WordIds, "MAX_WORDS", 6)
    for texts in blocks:
        expected = [e.ids for e in trained.encode_batch(texts, add_special_tokens=False)]
        assert tokenize.encode(trained, pa.array(texts)).to_pylist() == expected
        assert len(tokenize._WORD_IDS.words) <= max(6, len(set(" ".join(texts).split())) * 2)


def test_word_starts_are_spaces_before_visible_characters_of_the_same_row():
    from kubeforge_trainer.data.kernels.textscan import spaces_before_words, utf8_bytes

    texts = pa.array(["a b", "x ", " y", "p \u00a0q", "é é", "c\u3000 d", "  e"])
    view = utf8_bytes(texts)
    starts = spaces_before_words(view)
    rows = np.searchsorted(view.starts, starts, side="right") - 1
    # Row by row: "a| b", none ("x " ends there), "| y", none (a no-break space follows), "é| é", "c\u3000| d", " | e".
    assert rows.tolist() == [0, 2, 4, 5, 6]
    assert bytes(view.data[starts + 1]) == b"by" + "é".encode()[:1] + b"de"


def test_tokens_added_to_a_tokenizer_in_use_are_seen_by_the_next_encode():
    tokenizer = tokenize.train_bpe([CORPUS], 300, 2)
    texts = ["the lazy<x> dog", "quick<x>"]
    before = tokenize.encode(tokenizer, texts).to_pylist()
    tokenizer.add_special_tokens(["<x>"])
    after = tokenize.encode(tokenizer, texts).to_pylist()
    assert after == [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] and after != before


@pytest.mark.parametrize("by_words", [True, False])
def test_a_file_that_enables_padding_or_truncation_still_gives_every_id(by_words):
    from tokenizers import normalizers

    tokenizer = tokenize.train_bpe([CORPUS], 300, 2)
    if not by_words:
        tokenizer.normalizer = normalizers.Lowercase()
    texts = ["the quick brown fox jumps over the lazy dog", "pack", "", "the lazy dog and the quick fox"]
    expected = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    tokenizer.enable_truncation(max_length=3)
    tokenizer.enable_padding(pad_id=0, pad_token="<pad>")
    assert tokenize.splits_at_spaces(tokenizer) is by_words
    assert tokenize.encode(tokenizer, texts).to_pylist() == expected
    assert tokenizer.truncation is not None and tokenizer.padding is not None  # the caller's tokenizer is untouched


def test_a_tokenizer_text_is_built_once_per_process_while_it_stays_the_same(trained):
    text = trained.to_str()
    first = tokenize.from_json(text)
    assert tokenize.from_json(str(text)) is first
    assert first.to_str() == text
    other = tokenize.train_bpe([CORPUS[:50]], 280, 2).to_str()
    assert tokenize.from_json(other) is not first and tokenize.from_json(other).to_str() == other


def test_encoding_a_slice_of_rows_at_a_time_gives_the_same_ids(trained, monkeypatch):
    texts = [*CORPUS[:40], "", " lead", "x" * 50, "trail  "]
    expected = [e.ids for e in trained.encode_batch(texts, add_special_tokens=False)]
    monkeypatch.setattr(tokenize, "SLICE_BYTES", 64)  # a few rows per slice; the 50-byte row alone
    encoded = tokenize.encode(trained, pa.array([None, *texts]).slice(1))
    assert encoded.to_pylist() == expected
