"""Fine-tuning a local Hugging Face GPT-2 directory with LoRA (peft) under ZeRO-2 on two workers: the export is a
plain kubeforge model whose untouched weights are exactly the Hugging Face ones and whose attention weights carry
the merged adapters."""

from __future__ import annotations

import shutil

import pytest
import torch
from kubeforge_trainer.models import load_model_dir
from kubeforge_trainer.models.hf import load_hf_gpt2_dir
from kubeforge_trainer.train import run_trainingjob
from tokenizers import Tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def hf_gpt2_dir(tmp_path, tokenizer_file):
    """A tiny randomly initialised transformers GPT2LMHeadModel saved with save_pretrained, sharing our tokenizer."""
    transformers = pytest.importorskip("transformers")
    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(1)
    directory = tmp_path / "hf-gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    shutil.copyfile(tokenizer_file, directory / "tokenizer.json")
    return directory


def test_lora_fine_tune_of_a_hugging_face_gpt2(ray_local, lm_dataset, hf_gpt2_dir, tmp_path, status_file, helpers):
    root = tmp_path / "ckpt"
    job = helpers.make_job(
        "hf-lora",
        lm_dataset,
        root,
        model={
            "pretrained": {"path": str(hf_gpt2_dir), "format": "huggingface"},
            "lora": {"rank": 4, "alpha": 8, "targetModules": ["qkv", "proj", "fc1", "fc2"]},
        },
        training={"maxSteps": 16, "learningRate": 0.02},
        deepspeed={"zeroStage": 2},
    )

    result = run_trainingjob(job, str(lm_dataset), status_file("hf-lora").reporter)

    assert result["steps"] == 16
    losses = [float(r["loss"]) for r in helpers.read_csv_rows(root / "logs" / "train.csv")]
    assert losses[-1] < losses[0], losses
    _, hf_weights, _ = load_hf_gpt2_dir(hf_gpt2_dir)
    exported, config, _ = load_model_dir(root / "model")
    assert (config.n_layers, config.d_model, config.context_length) == (1, 32, 32)
    adapted = ("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")
    for name, weight in hf_weights.items():
        mine = exported.get_parameter(name)
        if name.endswith(adapted):
            assert not torch.equal(mine, weight), name
            assert torch.allclose(mine, weight, atol=0.5), name  # a low-rank update, not a different matrix
        else:
            assert torch.equal(mine, weight), name
