"""DPO through the real training entry point (Ray Train, DeepSpeed ZeRO-2 on two CPU workers): LoRA on a tiny
Hugging Face Llama directory, the reference being the same model with its adapters disabled, learns which of two
answers is preferred, and the DPO metrics reach the status and the final test metrics. (SFT shares the objective step
and the loop; its loss and masks are unit-tested in tests/unit/train/test_train_objectives.py.)"""

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


def test_lora_dpo_with_disabled_adapters_as_reference(
    ray_local, tokenizer_file, single_token_words, hf_llama_dir, tmp_path, status_file, helpers
) -> None:
    tokenizer, words = single_token_words
    pairs = preference_dataset(tmp_path / "pairs", tokenizer_file, tokenizer, words)
    job = helpers.make_job(
        "dpo",
        pairs,
        tmp_path / "dpo",
        objective="dpo",
        dpo={"beta": 0.5},
        model={
            "pretrained": {"uri": str(hf_llama_dir)},
            "lora": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj", "lm_head"]},
        },
        training={"maxSteps": 12, "warmupSteps": 0, "schedule": "constant"},
        evaluation={"intervalSteps": 6, "bestMetric": "rewardAccuracy", "bestMode": "max"},
    )
    status = status_file("dpo")
    dpo = run_trainingjob(job, str(pairs), status.reporter)
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
