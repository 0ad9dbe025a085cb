"""SFT then DPO through the real training entry point (Ray Train, DeepSpeed ZeRO-2 on two CPU workers): a tiny
Llama-architecture model learns the assistant answers of a chat set, its export starts a LoRA DPO run whose reference
is the same model with the adapters disabled, and the DPO metrics reach the status and the final test metrics."""

from __future__ import annotations

import math
import random

import pytest
from kubeforge_trainer.train import run_trainingjob
from kubeforge_trainer.train.synthetic import write_dataset
from tokenizers import Tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

M = -100
GOOD, BAD = ("file", "string"), ("object",)  # one token each in the tokenizer fixture


def _prompt(rng: random.Random, words: list[str], tokenizer: Tokenizer) -> list[int]:
    return tokenizer.encode(" ".join(rng.sample(words, 6))).ids[:20]


@pytest.fixture
def single_token_words(corpus, tokenizer_file) -> tuple[Tokenizer, list[str]]:
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    assert all(len(tokenizer.encode(w).ids) == 1 for w in GOOD + BAD)
    words = sorted({w for line in corpus[:400] for w in line.split() if w.isalpha()} - set(GOOD + BAD))
    return tokenizer, words


def chat_dataset(root, tokenizer_file, tokenizer: Tokenizer, words: list[str]):
    """Prompts of corpus words (masked) answered by three words from GOOD, then <eos> (trained)."""
    rng = random.Random(5)
    splits, labels = {}, {}
    for split, count in (("train", 96), ("validation", 16), ("test", 16)):
        splits[split], labels[split] = [], []
        for _ in range(count):
            prompt = _prompt(rng, words, tokenizer)
            answer = [tokenizer.token_to_id(rng.choice(GOOD)) for _ in range(3)] + [1]
            splits[split].append(prompt + answer)
            labels[split].append([M] * len(prompt) + answer)
    return write_dataset(
        root,
        task="chat",
        sequence_length=32,
        tokenizer_file=tokenizer_file,
        vocab_size=tokenizer.get_vocab_size(),
        splits=splits,
        sequences={"labels": labels},
        pad_token_id=0,
        eos_token_id=1,
    )


def preference_dataset(root, tokenizer_file, tokenizer: Tokenizer, words: list[str]):
    """Pairs after a shared prompt: chosen answers words from GOOD, rejected ones mix in BAD."""
    rng = random.Random(6)
    columns = ("chosen_labels", "rejected_input_ids", "rejected_labels")
    chosen: dict[str, list[list[int]]] = {}
    sequences: dict[str, dict[str, list[list[int]]]] = {c: {} for c in columns}
    for split, count in (("train", 64), ("validation", 16), ("test", 16)):
        chosen[split] = []
        for c in columns:
            sequences[c][split] = []
        for _ in range(count):
            prompt = _prompt(rng, words, tokenizer)
            good = [tokenizer.token_to_id(rng.choice(GOOD)) for _ in range(3)] + [1]
            bad = [tokenizer.token_to_id(rng.choice(GOOD + BAD)) for _ in range(2)] + [tokenizer.token_to_id(BAD[0]), 1]
            chosen[split].append(prompt + good)
            sequences["chosen_labels"][split].append([M] * len(prompt) + good)
            sequences["rejected_input_ids"][split].append(prompt + bad)
            sequences["rejected_labels"][split].append([M] * len(prompt) + bad)
    return write_dataset(
        root,
        task="preference",
        sequence_length=32,
        tokenizer_file=tokenizer_file,
        vocab_size=tokenizer.get_vocab_size(),
        splits=chosen,
        ids_column="chosen_input_ids",
        sequences=sequences,
        pad_token_id=0,
        eos_token_id=1,
    )


def test_sft_then_lora_dpo_with_disabled_adapters_as_reference(
    ray_local, tokenizer_file, single_token_words, tmp_path, status_file, helpers
) -> None:
    tokenizer, words = single_token_words
    chat = chat_dataset(tmp_path / "chat", tokenizer_file, tokenizer, words)
    pairs = preference_dataset(tmp_path / "pairs", tokenizer_file, tokenizer, words)
    common = {"training": {"maxSteps": 12, "warmupSteps": 0, "schedule": "constant"}}

    sft_job = helpers.make_job(
        "sft", chat, tmp_path / "sft", objective="sft", evaluation={"intervalSteps": 6}, **common
    )
    sft = run_trainingjob(sft_job, str(chat), status_file("sft").reporter)
    train_rows = helpers.read_csv_rows(tmp_path / "sft" / "logs" / "train.csv")
    first, last = float(train_rows[0]["loss"]), float(train_rows[-1]["loss"])
    # Answers are 3 of 2 words then <eos>: from ~log(512) = 6.2 nats at random to well under 2.
    assert first > 4.0 and last < 2.0, (first, last)
    assert set(sft["testMetrics"]) == {"loss", "perplexity"}
    assert sft["testMetrics"]["perplexity"] == pytest.approx(math.exp(sft["testMetrics"]["loss"]), rel=1e-6)

    dpo_job = helpers.make_job(
        "dpo",
        pairs,
        tmp_path / "dpo",
        objective="dpo",
        dpo={"beta": 0.5},
        model={
            "pretrained": {"uri": sft["modelUri"]},
            "lora": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj", "lm_head"]},
        },
        evaluation={"intervalSteps": 6, "bestMetric": "rewardAccuracy", "bestMode": "max"},
        **common,
    )
    status = status_file("dpo")
    dpo = run_trainingjob(dpo_job, str(pairs), status.reporter)
    test = dpo["testMetrics"]
    assert set(test) == {
        "loss",
        "rewardAccuracy",
        "rewardMargin",
        "chosenReward",
        "rejectedReward",
        "chosenLogps",
        "rejectedLogps",
    }
    # Chance is 0.5 (and 0 at the start, where policy = reference); the rejected answers always hold "object".
    assert test["rewardAccuracy"] >= 0.9 and test["rewardMargin"] > 0, test
    assert test["loss"] < math.log(2)
    reported = status.read()
    assert set(reported["trainMetrics"]) >= {"rewardAccuracy", "rewardMargin", "chosenLogps", "rejectedLogps"}
    assert reported["evalMetrics"]["rewardAccuracy"] >= 0.9
