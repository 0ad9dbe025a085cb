"""SFT and DPO objectives: collation, masks, losses against hand-made values and TRL's DPOTrainer, the reference
model (frozen copy or disabled LoRA adapters), training that lowers SFT loss and raises held-out reward accuracy,
and the spec.objective API rules. Tiny random Llama models built from configs; no downloads."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kubeforge.api.trainingjob import ModelSpec, TrainingJob
from kubeforge.validate import cel_problems, validate_document
from kubeforge_trainer.models.build import build_config
from kubeforge_trainer.train.modeling import resolve_model
from kubeforge_trainer.train.objectives import (
    DPO_METRICS,
    DpoSettings,
    ReferencePolicy,
    causal_logits,
    collate_chat,
    collate_preference,
    dpo_forward,
    dpo_from_logps,
    dpo_losses,
    dpo_metrics_from_sums,
    dpo_settings,
    needs_frozen_base,
    objective_step,
    reference_kind,
    sequence_logps,
    sft_loss,
    sft_metrics,
)
from kubeforge_trainer.train.plan import (
    DatasetInfo,
    SpecError,
    check_dataset_task,
    parse_manifest,
    resolve_eval_metrics,
)
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 32
PAD = 0
M = -100  # a masked label


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
        pad_token_id=PAD,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def lora(model: LlamaForCausalLM, random_b: bool) -> Any:
    # init_lora_weights=False starts B random too, so the adapters change the output from the first step.
    # lm_head too: with only the attention/MLP projections of this 16-wide model, 20 DPO steps plateau at 29 of 32
    # held-out pairs (measured), with the head they reach 32 of 32 in 5.
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=not random_b)
    return get_peft_model(model, config)


# ------------------------------------------------------------------ collation and masks


def test_chat_collation_pads_ids_mask_and_labels() -> None:
    batch = {"input_ids": [[5, 6, 7, 8], [9, 10]], "labels": [[M, M, 7, 8], [M, 10]]}
    ids, mask, labels = collate_chat(batch, pad_token_id=3)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 3, 3]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert labels.tolist() == [[M, M, 7, 8], [M, 10, M, M]]


def test_preference_collation_puts_chosen_then_rejected_in_one_batch() -> None:
    batch = {
        "chosen_input_ids": [[4, 5, 6], [4, 7]],
        "chosen_labels": [[M, 5, 6], [M, 7]],
        "rejected_input_ids": [[4, 8], [4, 9, 9, 9]],
        "rejected_labels": [[M, 8], [M, 9, 9, 9]],
    }
    ids, mask, labels = collate_preference(batch, pad_token_id=PAD)
    assert ids.tolist() == [[4, 5, 6, 0], [4, 7, 0, 0], [4, 8, 0, 0], [4, 9, 9, 9]]
    assert mask.sum(-1).tolist() == [3, 2, 2, 4]
    assert labels.tolist() == [[M, 5, 6, M], [M, 7, M, M], [M, 8, M, M], [M, 9, 9, 9]]


def test_collation_rejects_rows_whose_labels_do_not_match() -> None:
    with pytest.raises(ValueError, match="row 0: 3 input_ids but 2 labels"):
        collate_chat({"input_ids": [[1, 2, 3]], "labels": [[1, 2]]}, PAD)


@pytest.mark.parametrize(
    "labels",
    [
        # system + user (masked), one assistant answer, padding
        [[M, M, M, M, 11, 12, 13, M], [M, M, 21, 22, M, M, M, M]],
        # multi-turn: user, assistant, user, assistant
        [[M, M, 11, 12, M, M, 13, 14], [M, 21, M, M, M, 22, 23, M]],
    ],
    ids=["single-turn", "multi-turn"],
)
def test_sft_loss_is_cross_entropy_over_assistant_tokens_only(labels: list[list[int]]) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 8, VOCAB, requires_grad=True)
    targets = torch.tensor(labels)
    loss, tokens = sft_loss(logits, targets)
    trained = [(b, t) for b in range(2) for t in range(1, 8) if labels[b][t] != M]
    by_hand = sum(-F.log_softmax(logits[b, t - 1], -1)[labels[b][t]] for b, t in trained) / len(trained)
    assert tokens == len(trained)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    # No gradient reaches a position whose next token is a prompt/system token, padding, or past the end.
    predicting = {(b, t - 1) for b, t in trained}
    for b in range(2):
        for t in range(8):
            assert (logits.grad[b, t].abs().sum() > 0) == ((b, t) in predicting), (b, t)


def test_sft_loss_sum_and_a_batch_without_assistant_tokens() -> None:
    logits = torch.randn(1, 4, VOCAB, requires_grad=True)
    labels = torch.tensor([[M, 3, 4, 5]])
    mean, n = sft_loss(logits, labels)
    total, _ = sft_loss(logits, labels, "sum")
    assert n == 3 and total.item() == pytest.approx(3 * mean.item(), rel=1e-6)
    empty, n = sft_loss(logits, torch.full((1, 4), M))
    assert n == 0 and empty.item() == 0.0
    empty.backward()  # still differentiable
    assert sft_metrics(total.item(), n + 3) == pytest.approx({"loss": mean.item(), "perplexity": math.exp(mean.item())})


def test_sequence_logps_sum_only_trained_tokens() -> None:
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.tensor([[M, M, 7, 8, M], [M, 9, M, M, M]])
    logps, tokens = sequence_logps(logits, labels)
    log_softmax = F.log_softmax(logits, -1)
    assert tokens.tolist() == [2, 1]
    assert logps[0].item() == pytest.approx((log_softmax[0, 1, 7] + log_softmax[0, 2, 8]).item(), rel=1e-6)
    assert logps[1].item() == pytest.approx(log_softmax[1, 0, 9].item(), rel=1e-6)


# ------------------------------------------------------------------ DPO loss values


def _pair(*values: float) -> list[torch.Tensor]:
    return [torch.tensor([v]) for v in values]


@pytest.mark.parametrize(
    ("loss_type", "smoothing", "expected"),
    [
        ("sigmoid", 0.0, math.log(2)),  # -log σ(0)
        ("hinge", 0.0, 1.0),  # max(0, 1 - 0)
        ("ipo", 0.0, (1 / (2 * 0.5)) ** 2),  # (0 - 1/(2β))²
        ("robust", 0.1, math.log(2)),  # (0.9·log 2 - 0.1·log 2) / 0.8
    ],
)
def test_dpo_loss_when_policy_equals_reference(loss_type: str, smoothing: float, expected: float) -> None:
    settings = DpoSettings(beta=0.5, loss_type=loss_type, label_smoothing=smoothing)
    logps = torch.tensor([-4.0, -7.5, -2.0, -3.0])  # 2 pairs: chosen -4, -7.5; rejected -2, -3
    out = dpo_from_logps(logps, logps.clone(), torch.tensor([2, 3, 1, 4]), settings)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    metrics = dpo_metrics_from_sums(out.metric_sums())
    assert metrics["rewardAccuracy"] == 0.0  # equal rewards are not a win
    assert metrics["rewardMargin"] == 0.0
    assert metrics["chosenLogps"] == pytest.approx(-5.75)
    assert metrics["rejectedLogps"] == pytest.approx(-2.5)


@pytest.mark.parametrize(
    ("loss_type", "smoothing", "expected"),
    [
        # d = (-1 - -2) - (-3 - -2) = 2, β·d = 1
        ("sigmoid", 0.0, math.log1p(math.exp(-1))),
        ("hinge", 0.0, 0.0),
        # token-averaged: 1/2 - (-1)/4 = 0.75; (0.75 - 1/(2·0.5))² = 0.0625
        ("ipo", 0.0, 0.0625),
        ("robust", 0.1, (0.9 * math.log1p(math.exp(-1)) - 0.1 * math.log1p(math.exp(1))) / 0.8),
    ],
)
def test_dpo_loss_on_hand_made_log_probabilities(loss_type: str, smoothing: float, expected: float) -> None:
    settings = DpoSettings(beta=0.5, loss_type=loss_type, label_smoothing=smoothing)
    losses = dpo_losses(*_pair(-1.0, -3.0, -2.0, -2.0), settings, torch.tensor([2]), torch.tensor([4]))
    assert losses.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
    out = dpo_from_logps(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), torch.tensor([2, 4]), settings)
    assert dpo_metrics_from_sums(out.metric_sums()) == pytest.approx(
        {
            "loss": expected,
            "rewardAccuracy": 1.0,
            "rewardMargin": 1.0,
            "chosenReward": 0.5,
            "rejectedReward": -0.5,
            "chosenLogps": -1.0,
            "rejectedLogps": -3.0,
        },
        rel=1e-6,  # float32 tensors
        abs=1e-7,
    )


def test_dpo_metric_sums_add_up_across_workers() -> None:
    settings = DpoSettings(beta=0.2)
    policy = torch.tensor([-1.0, -5.0, -2.0, -3.0, -4.0, -3.0])
    reference = torch.tensor([-2.0, -4.0, -2.5, -2.0, -4.0, -2.0])
    tokens = torch.tensor([1, 2, 3, 1, 2, 3])
    whole = dpo_metrics_from_sums(dpo_from_logps(policy, reference, tokens, settings).metric_sums())
    # Two "workers": pairs {0} and {1, 2}; rows are chosen-first per batch.
    first = dpo_from_logps(policy[[0, 3]], reference[[0, 3]], tokens[[0, 3]], settings).metric_sums()
    rest = dpo_from_logps(policy[[1, 2, 4, 5]], reference[[1, 2, 4, 5]], tokens[[1, 2, 4, 5]], settings).metric_sums()
    summed = dpo_metrics_from_sums([a + b for a, b in zip(first, rest, strict=True)])
    assert summed == pytest.approx(whole)
    assert whole["rewardAccuracy"] == pytest.approx(2 / 3)  # log-ratio differences 2, -1, 1.5: pairs 0 and 2 win
    assert set(whole) == set(DPO_METRICS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "kto"}, "unknown DPO loss type"),
        ({"beta": 0.0}, "beta must be positive"),
        ({"loss_type": "sigmoid", "label_smoothing": 0.1}, "robust only"),
        ({"loss_type": "robust", "label_smoothing": 0.5}, r"\[0, 0.5\)"),
    ],
)
def test_dpo_settings_reject_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DpoSettings(**kwargs)


# ------------------------------------------------------------------ agreement with TRL


def test_dpo_loss_and_metrics_agree_with_trl_dpo_trainer(tmp_path: Path) -> None:
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")
    policy = tiny_llama(0)
    reference_model = tiny_llama(1)  # a different reference, so the log-ratios are not zero
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, beta=0.3)
    # TRL needs a training set to build the trainer; the batch compared below is made by hand.
    pairs = Dataset.from_dict({"prompt": ["w1 w2"], "chosen": [" w3"], "rejected": [" w4"]})
    trainer = DPOTrainer(
        model=policy, ref_model=reference_model, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    trainer.model.eval()
    batch = {
        "chosen_input_ids": [[5, 6, 7, 8, 9], [5, 11, 12, 13, 14, 15, 16]],
        "chosen_labels": [[M, M, 7, 8, 9], [M, M, M, 13, 14, 15, 16]],
        "rejected_input_ids": [[5, 6, 20, 21, 22, 23], [5, 11, 12, 24]],
        "rejected_labels": [[M, M, 20, 21, 22, 23], [M, M, M, 24]],
    }
    ids, mask, labels = collate_preference(batch, PAD)
    trl_inputs = {"input_ids": ids, "attention_mask": mask, "completion_mask": (labels != M).long()}
    reference = ReferencePolicy.frozen_copy(reference_model)
    cases = [("sigmoid", 0.3, 0.0), ("hinge", 0.3, 0.0), ("ipo", 0.3, 0.0), ("robust", 0.2, 0.2)]
    for loss_type, beta, smoothing in cases:
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        trainer.beta, trainer.label_smoothing = beta, smoothing
        trainer._metrics["eval"].clear()
        with torch.no_grad():
            expected = trainer.compute_loss(trainer.model, trl_inputs).item()
            settings = DpoSettings(beta=beta, loss_type=loss_type, label_smoothing=smoothing)
            ours = dpo_forward(policy, reference, ids, mask, labels, settings)
        trl_metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        metrics = dpo_metrics_from_sums(ours.metric_sums())
        assert ours.loss.item() == pytest.approx(expected, rel=1e-5), loss_type
        assert metrics["rewardAccuracy"] == pytest.approx(trl_metrics["rewards/accuracies"])
        assert metrics["rewardMargin"] == pytest.approx(trl_metrics["rewards/margins"], rel=1e-5)
        assert metrics["chosenReward"] == pytest.approx(trl_metrics["rewards/chosen"], rel=1e-5)
        assert metrics["rejectedReward"] == pytest.approx(trl_metrics["rewards/rejected"], rel=1e-5)
        assert metrics["chosenLogps"] == pytest.approx(trl_metrics["logps/chosen"], rel=1e-5)
        assert metrics["rejectedLogps"] == pytest.approx(trl_metrics["logps/rejected"], rel=1e-5)
    assert metrics["rewardMargin"] != 0.0  # the comparison was not between zeros


# ------------------------------------------------------------------ the reference model


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return collate_chat({"input_ids": [[4, 5, 6, 7, 8], [4, 9, 10]], "labels": [[M, M, 6, 7, 8], [M, 9, 10]]}, PAD)


def test_reference_with_disabled_adapters_equals_the_base_model() -> None:
    base = tiny_llama(0)
    base_copy = copy.deepcopy(base)
    policy = lora(base, random_b=True).train()
    ids, mask, labels = _batch()
    with torch.no_grad():
        expected, _ = sequence_logps(causal_logits(base_copy, ids, mask), labels)
        adapted, _ = sequence_logps(causal_logits(policy, ids, mask), labels)
    assert not torch.allclose(adapted, expected, atol=1e-4)  # the adapters do change the policy
    reference = ReferencePolicy.disabled_adapters(policy)
    got = reference.logps(ids, mask, labels)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not got.requires_grad
    assert policy.training  # back in train mode
    with torch.no_grad():  # adapters are active again afterwards
        again, _ = sequence_logps(causal_logits(policy.eval(), ids, mask), labels)
    torch.testing.assert_close(again, adapted)


def test_disabled_adapters_need_a_lora_model() -> None:
    ids, mask, labels = _batch()
    with pytest.raises(ValueError, match="needs a LoRA"):
        ReferencePolicy.disabled_adapters(tiny_llama()).logps(ids, mask, labels)


def test_frozen_copy_is_independent_of_the_trained_policy() -> None:
    policy = tiny_llama(0)
    reference = ReferencePolicy.frozen_copy(policy)
    assert not any(p.requires_grad for p in reference.model.parameters())
    ids, mask, labels = _batch()
    before = reference.logps(ids, mask, labels)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    torch.testing.assert_close(reference.logps(ids, mask, labels), before)


# ------------------------------------------------------------------ training moves the right way


def test_a_few_sft_steps_lower_the_assistant_token_loss() -> None:
    model = tiny_llama(0).train()
    generator = torch.Generator().manual_seed(0)
    rows, targets = [], []
    for _ in range(8):
        prompt = torch.randint(3, 16, (4,), generator=generator).tolist()
        answer = [16 + (t % 8) for t in prompt]  # learnable: the answer is a function of the prompt
        rows.append([2, *prompt, *answer])  # 2 plays the system token
        targets.append([M] * 5 + answer)
    ids, mask, labels = collate_chat({"input_ids": rows, "labels": targets}, PAD)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, tokens = sft_loss(causal_logits(model, ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert tokens == 32
    # A random 32-token model starts near log(32) = 3.47; 15 AdamW steps on one batch roughly halve it.
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)
    assert losses[-1] < 0.6 * losses[0], losses


def _preference_set(n: int, seed: int) -> dict[str, list[list[int]]]:
    """Pairs whose chosen answers use tokens 10-19 and rejected answers tokens 20-29, after random prompts."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, list[list[int]]] = {
        "chosen_input_ids": [],
        "chosen_labels": [],
        "rejected_input_ids": [],
        "rejected_labels": [],
    }
    for _ in range(n):
        prompt = torch.randint(3, 10, (3,), generator=generator).tolist()
        for name, low in (("chosen", 10), ("rejected", 20)):
            answer = torch.randint(low, low + 10, (3,), generator=generator).tolist()
            out[f"{name}_input_ids"].append(prompt + answer)
            out[f"{name}_labels"].append([M] * 3 + answer)
    return out


@pytest.mark.parametrize("reference_kind", ["base", "adaptersDisabled"])
def test_a_few_dpo_steps_raise_held_out_reward_accuracy(reference_kind: str) -> None:
    base = tiny_llama(0)
    if reference_kind == "base":
        reference = ReferencePolicy.frozen_copy(base)
        policy = base.train()
    else:
        policy = lora(base, random_b=False).train()  # LoRA starts as the identity: policy == reference
        reference = ReferencePolicy.disabled_adapters(policy)
    settings = DpoSettings(beta=0.5)
    train = collate_preference(_preference_set(16, seed=1), PAD)
    held_out = collate_preference(_preference_set(32, seed=2), PAD)

    def held_out_metrics() -> dict[str, float]:
        with torch.no_grad():
            return dpo_metrics_from_sums(dpo_forward(policy, reference, *held_out, settings).metric_sums())

    before = held_out_metrics()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(10):
        out = dpo_forward(policy, reference, *train, settings)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = held_out_metrics()
    # Policy == reference at the start: every reward is 0, no pair is won and the loss is log 2.
    assert before["rewardAccuracy"] == 0.0 and before["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # On 32 unseen pairs the rule (answers from 10-19 beat answers from 20-29) is learned: chance would be 0.5.
    assert after["rewardAccuracy"] >= 0.9, after
    assert after["rewardMargin"] > 0 and after["loss"] < before["loss"]


# ------------------------------------------------------------------ spec.objective


def _job(**spec: Any) -> dict[str, Any]:
    base = {"dataRef": {"name": "d"}, "training": {"maxSteps": 5}, "checkpoint": {"uri": "/tmp/c"}}
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "t"},
        "spec": {**base, **spec},
    }


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        ({}, []),
        ({"objective": "sft"}, []),
        ({"objective": "dpo", "dpo": {"beta": 0.2, "lossType": "ipo"}}, []),
        ({"objective": "dpo", "dpo": {"lossType": "robust", "labelSmoothing": 0.1}}, []),
        ({"objective": "dpo", "model": {"lora": {}}, "dpo": {"reference": "adaptersDisabled"}}, []),
        ({"objective": "classification", "model": {"task": "classification"}}, []),
        ({"objective": "sft", "dpo": {}}, [("spec", "dpo is only for objective dpo")]),
        ({"dpo": {}}, [("spec", "dpo is only for objective dpo")]),
        ({"objective": "dpo", "dpo": {"reference": "adaptersDisabled"}}, [("spec", "needs model.lora")]),
        ({"objective": "dpo", "dpo": {"labelSmoothing": 0.1}}, [("spec.dpo", "labelSmoothing needs lossType robust")]),
        ({"objective": "classification"}, [("spec", "objective classification needs model.task classification")]),
        ({"objective": "sft", "model": {"task": "classification"}}, [("spec", "need model.task languageModeling")]),
    ],
)
def test_objective_rules(spec: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    job = TrainingJob.model_validate(_job(**spec))
    found = cel_problems("TrainingJob", job.to_wire())
    assert len(found) == len(problems), found
    for (path, message), (want_path, want_text) in zip(found, problems, strict=True):
        assert path == want_path and want_text in message


def test_objective_defaults() -> None:
    spec = TrainingJob.model_validate(_job(objective="dpo", dpo={})).spec
    assert spec.objective == "dpo"
    assert (spec.dpo.beta, spec.dpo.loss_type, spec.dpo.label_smoothing, spec.dpo.reference) == (
        0.1,
        "sigmoid",
        0.0,
        None,
    )
    assert TrainingJob.model_validate(_job()).spec.objective is None  # follows model.task


@pytest.mark.parametrize(
    ("spec", "dataset_task", "error"),
    [
        ({}, "languageModeling", None),
        ({"objective": "sft"}, "chat", None),
        ({"objective": "dpo"}, "preference", None),
        ({"model": {"task": "classification"}}, "classification", None),
        (
            {"objective": "dpo"},
            "chat",
            "TrainingJob/t: spec.objective: dpo trains on preference data, but the dataset at /d was built for chat",
        ),
        ({"objective": "sft"}, "languageModeling", "spec.objective: sft trains on chat data"),
        ({}, "preference", "spec.model.task: is languageModeling but the dataset at /d was built for preference"),
    ],
)
def test_the_dataset_must_match_the_objective(spec: dict[str, Any], dataset_task: str, error: str | None) -> None:
    parsed = TrainingJob.model_validate(_job(**spec)).spec
    if error is None:
        check_dataset_task("t", parsed, dataset_task, "/d")
    else:
        with pytest.raises(SpecError, match=re.escape(error)):
            check_dataset_task("t", parsed, dataset_task, "/d")


def test_dpo_settings_and_reference_from_the_spec() -> None:
    plain = TrainingJob.model_validate(_job(objective="dpo")).spec
    assert dpo_settings(plain) == DpoSettings(beta=0.1, loss_type="sigmoid", label_smoothing=0.0)
    assert reference_kind(plain) == "base"
    tuned = TrainingJob.model_validate(
        _job(objective="dpo", model={"lora": {}}, dpo={"beta": 0.3, "lossType": "robust", "labelSmoothing": 0.2})
    ).spec
    assert dpo_settings(tuned) == DpoSettings(beta=0.3, loss_type="robust", label_smoothing=0.2)
    assert reference_kind(tuned) == "adaptersDisabled"
    pinned = TrainingJob.model_validate(_job(objective="dpo", model={"lora": {}}, dpo={"reference": "base"})).spec
    assert reference_kind(pinned) == "base"


def test_objective_step_for_sft_and_dpo_runs() -> None:
    chat = {"input_ids": [[4, 5, 6, 7], [4, 8, 9]], "labels": [[M, M, 6, 7], [M, 8, 9]]}
    pairs = _preference_set(3, seed=3)
    cpu = torch.device("cpu")
    assert objective_step(TrainingJob.model_validate(_job()).spec, PAD, tiny_llama()) is None

    model = tiny_llama(0)
    step = objective_step(TrainingJob.model_validate(_job(objective="sft")).spec, PAD, model)
    loss, tokens, sums = step.forward(model, chat, cpu)
    expected, trained = sft_loss(causal_logits(model, *collate_chat(chat, PAD)[:2]), collate_chat(chat, PAD)[2])
    assert (tokens, sums[1].item(), len(sums)) == (7, trained, step.sums_width)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and loss.requires_grad
    assert step.metrics(sums.tolist(), ["loss", "perplexity"]) == pytest.approx(
        {"loss": expected.item(), "perplexity": math.exp(expected.item())}, rel=1e-6
    )

    # dpo with LoRA: the reference is the policy with adapters disabled, so the first step sees log 2.
    lora_spec = TrainingJob.model_validate(_job(objective="dpo", model={"lora": {}}, dpo={"beta": 0.2})).spec
    policy = lora(tiny_llama(0), random_b=False)
    assert not needs_frozen_base(lora_spec)
    step = objective_step(lora_spec, PAD, policy)
    loss, tokens, sums = step.forward(policy, pairs, cpu)
    assert step.reference.adapters_off and step.settings.beta == 0.2
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and tokens == 36 and len(sums) == step.sums_width
    assert step.metrics(sums.tolist(), ["rewardAccuracy", "loss"]) == pytest.approx(
        {"rewardAccuracy": 0.0, "loss": math.log(2)}
    )

    # dpo without LoRA: a frozen base model built beside the policy.
    full_spec = TrainingJob.model_validate(_job(objective="dpo")).spec
    assert needs_frozen_base(full_spec)
    base = tiny_llama(0).train()
    step = objective_step(full_spec, PAD, tiny_llama(0), base, torch.float64)
    assert step.reference.model is base and not step.reference.adapters_off
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    assert next(base.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="frozen base"):
        objective_step(full_spec, PAD, tiny_llama(0))


def _manifest(**fields: Any) -> dict[str, Any]:
    return {"task": "chat", "sequenceLength": 64, "vocabSize": 32, "splits": {"train": {"rows": 4}}, **fields}


def test_chat_and_preference_manifests_are_read_and_documents_are_refused() -> None:
    assert parse_manifest("t", "/d", _manifest()).task == "chat"
    assert parse_manifest("t", "/d", _manifest(task="preference", format="tokenized")).task == "preference"
    with pytest.raises(SpecError, match=r"dataset /d: holds documents \(output.format\), not token ids"):
        parse_manifest("t", "/d", _manifest(format="documents"))


@pytest.mark.parametrize(
    ("task", "sequence_length", "fits"), [("chat", 32, True), ("chat", 33, False), ("languageModeling", 33, True)]
)
def test_a_pretrained_window_must_hold_whole_chat_rows(task: str, sequence_length: int, fits: bool) -> None:
    # A 32-token window holds 32-token chat rows, and packed language-model rows of 33 (they feed 32 tokens).
    config = build_config("llama", vocab_size=VOCAB, hidden_size=16, layers=1, heads=2, context_length=32)
    data = DatasetInfo("/d", task, sequence_length, VOCAB, PAD, 1, (), "tokenizer.json", {})
    model = ModelSpec.model_validate({"pretrained": {"uri": "/base"}})
    if fits:
        resolve_model("t", model, data, config)
    else:
        with pytest.raises(SpecError, match=r"context length 32 is shorter than the dataset's sequences \(33 tokens\)"):
            resolve_model("t", model, data, config)


def test_an_unset_metrics_list_means_the_objectives_metrics_also_in_the_operators_wire_form() -> None:
    # The operator hands the driver resource.to_wire(), defaults included: the metrics must still be the objective's.
    job = TrainingJob.model_validate(
        _job(objective="dpo", evaluation={"bestMetric": "rewardAccuracy", "bestMode": "max"})
    )
    again = TrainingJob.model_validate(job.to_wire())
    assert resolve_eval_metrics(again.spec) == list(DPO_METRICS)
    assert validate_document("job.yaml", job.to_wire())[1] == []
    sft = TrainingJob.model_validate(TrainingJob.model_validate(_job(objective="sft")).to_wire())
    assert resolve_eval_metrics(sft.spec) == ["loss", "perplexity"]
