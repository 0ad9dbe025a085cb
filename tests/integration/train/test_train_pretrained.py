"""Starting from Hugging Face directories on two CPU workers: continue pre-training a sharded Qwen2-architecture
checkpoint read from a real S3 API (moto's server) with a larger vocabulary than the model's (embeddings and output
layer resized), then LoRA-fine-tune that export as a language model and export the peft adapter alone."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from kubeforge_trainer import storage
from kubeforge_trainer.models.build import build_config, build_model
from kubeforge_trainer.train import run_trainingjob

# s3_endpoint first: the Ray workers inherit the AWS_* variables from the process that starts Ray.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("s3_endpoint", "ray_local")]

BASE_VOCAB = 448  # the dataset's tokenizer has 512 tokens: 64 more than the base model knows


def split_loss(model: torch.nn.Module, dataset: Path, split: str) -> float:
    """Mean next-token loss of a transformers model on a whole split."""
    ids = torch.tensor(pq.read_table(dataset / split).column("input_ids").to_pylist(), dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits
    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)))


def train_losses(helpers, root: Path) -> list[float]:
    return [float(r["loss"]) for r in helpers.read_csv_rows(root / "logs" / "train.csv")]


def test_continue_pretraining_from_s3_then_lora_adapter(s3_endpoint, lm_dataset, tmp_path, status_file, helpers):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # A sharded base model (several safetensors files and their index) in a bucket.
    config = build_config(
        "qwen2",
        vocab_size=BASE_VOCAB,
        hidden_size=32,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate_size=64,
        context_length=64,
        special_tokens={"pad_token_id": 0, "eos_token_id": 1},
    )
    torch.manual_seed(3)
    base = tmp_path / "qwen2-base"
    build_model(config).save_pretrained(base, max_shard_size="40KB")
    assert (base / "model.safetensors.index.json").is_file() and len(list(base.glob("model-*.safetensors"))) > 1
    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=s3_endpoint).create_dir("models")
    base_uri = "s3://models/qwen2-base"
    storage.upload_dir(base, base_uri)

    # Continue pre-training with the 512-token dataset: the model grows to 512 tokens and learns.
    root = tmp_path / "continue"
    job = helpers.make_job("continue", lm_dataset, root, model={"pretrained": {"uri": base_uri}})
    result = run_trainingjob(job, str(lm_dataset), status_file("continue").reporter)
    losses = train_losses(helpers, root)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.4, losses
    export = root / "model"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == 512
    assert split_loss(model, lm_dataset, "test") == pytest.approx(result["testMetrics"]["loss"], rel=1e-4)
    lineage = json.loads((export / "kubeforge.json").read_text())["lineage"]
    assert lineage["baseModel"] == base_uri and lineage["parentJob"] is None

    # LoRA on that export (a kubeforge export is a Hugging Face directory), exporting the adapter alone.
    lora_root = tmp_path / "lora"
    job = helpers.make_job(
        "lora-lm",
        lm_dataset,
        lora_root,
        model={
            "pretrained": {"uri": str(export)},
            "lora": {
                "rank": 8,
                "alpha": 16,
                "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "export": "adapter",
            },
        },
        training={"learningRate": 0.005, "warmupSteps": 0, "schedule": "constant"},
        evaluation={"intervalSteps": 24},  # one validation, at the end: the export holds the fully trained adapters
        deepspeed={"zeroStage": 1},
    )
    result = run_trainingjob(job, str(lm_dataset), status_file("lora-lm").reporter)
    adapter = lora_root / "model"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(export)
    info = json.loads((adapter / "kubeforge.json").read_text())
    assert info["baseModel"] == str(export) and info["lineage"]["parentJob"] == "continue"
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(export), adapter).eval()
    assert split_loss(adapted, lm_dataset, "test") == pytest.approx(result["testMetrics"]["loss"], rel=1e-4)
    # The LoRA loss-decrease check, on fixed data rather than the logged 2-step windows: this 1-layer model is
    # already near its plateau after the 24 steps above, so window-to-window noise (~0.1) hides the adapters' gain.
    # Measured on the train split the adapters saw: 5.367 -> 5.249 (2026-12-06, 2-core CPU). Adapters that are not
    # applied, not loaded or still zero give exactly the base's loss; diverged ones a higher one.
    base_model = AutoModelForCausalLM.from_pretrained(export)
    base_train, adapted_train = split_loss(base_model, lm_dataset, "train"), split_loss(adapted, lm_dataset, "train")
    assert adapted_train < base_train - 0.05, (base_train, adapted_train)
    assert result["testMetrics"]["loss"] < split_loss(base_model, lm_dataset, "test")
