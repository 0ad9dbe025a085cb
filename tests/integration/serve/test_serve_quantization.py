"""int8 dynamic quantisation of the tiny trained models: what it changes on held-out data (no Ray)."""

from __future__ import annotations

import pytest
import torch
from kubeforge.api.modeldeployment import GenerationDefaults
from kubeforge_trainer.serve.protocol import CompletionRequest
from kubeforge_trainer.serve.quantize import accuracy, perplexity
from kubeforge_trainer.serve.runner import ModelRunner
from support.tiny_models import TinyModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def linear_layers(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_int8_keeps_held_out_perplexity(tiny_lm: TinyModel) -> None:
    fp32 = ModelRunner.load(str(tiny_lm.path), "v1")
    int8 = ModelRunner.load(str(tiny_lm.path), "v1", quantization="int8")
    assert linear_layers(fp32.model) > 0 and linear_layers(int8.model) == 0  # every nn.Linear was replaced
    fp32_ppl, int8_ppl = perplexity(fp32.model, tiny_lm.heldout), perplexity(int8.model, tiny_lm.heldout)
    print(f"held-out perplexity fp32 {fp32_ppl:.3f} int8 {int8_ppl:.3f} ({100 * (int8_ppl / fp32_ppl - 1):+.2f}%)")
    assert fp32_ppl < tiny_lm.vocab_size / 4  # the model learned something, so the comparison means something
    assert int8_ppl == pytest.approx(fp32_ppl, rel=0.05)
    assert int8_ppl != fp32_ppl  # the weights really are different


def test_int8_generates_with_the_kv_cache(tiny_lm: TinyModel) -> None:
    int8 = ModelRunner.load(str(tiny_lm.path), "v1", quantization="int8")
    request = CompletionRequest(prompts=("Return the", "Open"), prompt_is_list=True, max_tokens=10, temperature=0.0)
    tasks = int8.prepare_completion(request, GenerationDefaults())
    int8.generate(tasks)
    assert [len(t.token_ids) for t in tasks] == [10, 10]
    assert all(t.finish_reason == "length" for t in tasks)


def test_int8_keeps_classifier_accuracy(tiny_classifier: TinyModel) -> None:
    fp32 = ModelRunner.load(str(tiny_classifier.path), "c1")
    int8 = ModelRunner.load(str(tiny_classifier.path), "c1", quantization="int8")
    pad = tiny_classifier.pad_token_id
    fp32_acc = accuracy(fp32.model, tiny_classifier.heldout, tiny_classifier.heldout_labels, pad)
    int8_acc = accuracy(int8.model, tiny_classifier.heldout, tiny_classifier.heldout_labels, pad)
    majority = 1 - sum(tiny_classifier.heldout_labels) / len(tiny_classifier.heldout_labels)
    print(f"held-out accuracy fp32 {fp32_acc:.4f} int8 {int8_acc:.4f} (majority class {majority:.4f})")
    assert fp32_acc > majority
    assert abs(int8_acc - fp32_acc) <= 0.03
