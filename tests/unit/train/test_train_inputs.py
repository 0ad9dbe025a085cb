"""Inputs of a run, without Ray: the dataset layout, batch collation, loss-curve files and the driver's checks of
a TrainingJob against its dataset (one-line errors naming the resource and the field)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kubeforge.api import TrainingJob
from kubeforge_trainer.models.build import build_config, build_model
from kubeforge_trainer.train import SpecError, output_uri, prepare_run
from kubeforge_trainer.train.curves import CurveWriter, rows_up_to
from kubeforge_trainer.train.dataset import collate_classification, collate_language_modeling, read_dataset_info
from kubeforge_trainer.train.synthetic import write_dataset
from tokenizers import Tokenizer, models


def tokenizer(path: Path, words: int = 40) -> Path:
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(words - 2)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<pad>")).save(str(path))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = rng.integers(2, 40, size=(40, 9)).tolist()
    return write_dataset(
        tmp_path / "data",
        task="languageModeling",
        sequence_length=9,
        tokenizer_file=tokenizer(tmp_path / "tok.json"),
        vocab_size=40,
        splits={"train": rows[:32], "validation": rows[32:36], "test": rows[36:]},
        eos_token_id=1,
    )


def job(data: Path, **spec: Any) -> TrainingJob:
    base: dict[str, Any] = {
        "dataRef": {"uri": str(data)},
        "model": {"architecture": "llama", "layers": 1, "heads": 2, "hiddenSize": 8, "contextLength": 8},
        "training": {"maxSteps": 4, "microBatchSize": 2},
        "checkpoint": {"uri": str(data.parent / "ckpt")},
        "workers": {"count": 2},
    }
    for key, value in spec.items():
        # A pretrained model fixes the architecture: its spec.model replaces the base one.
        base[key] = value if "pretrained" in value else {**base.get(key, {}), **value}
    return TrainingJob.model_validate(
        {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tj"}, "spec": base}
    )


def test_written_dataset_follows_the_contract(data: Path) -> None:
    manifest = json.loads((data / "_manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 32 and manifest["splits"]["train"]["tokens"] == 32 * 9
    shard = manifest["splits"]["train"]["shards"][0]
    assert (data / shard["path"]).is_file() and len(shard["sha256"]) == 64
    info = read_dataset_info("tj", str(data))
    assert (info.task, info.sequence_length, info.vocab_size, info.rows("test")) == ("languageModeling", 9, 40, 4)


def test_an_unfinished_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^TrainingJob/tj: spec.dataRef: no complete dataset at .*_manifest.json"):
        read_dataset_info("tj", str(tmp_path))


def test_collate_language_modeling_shifts_by_one() -> None:
    inputs, targets = collate_language_modeling(np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32))
    assert inputs.tolist() == [[1, 2, 3], [5, 6, 7]] and targets.tolist() == [[2, 3, 4], [6, 7, 8]]
    assert inputs.dtype == torch.int64
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.array([1, 2]), np.array([3, 4])]
    assert collate_language_modeling(ragged)[1].tolist() == [[2], [4]]


def test_collate_classification_pads_right_with_a_mask() -> None:
    ids, mask, labels = collate_classification([[5, 6, 7], [8]], [2, 0], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [2, 0]


def test_curves_drop_rows_after_the_resumed_step(tmp_path: Path) -> None:
    writer = CurveWriter(str(tmp_path), ["loss"], resume_step=0)
    for step in (10, 20, 30):
        writer.train(step, epoch=step / 10, loss=1.0 / step, learning_rate=0.1, tokens_per_second=5.0, mfu=None)
    writer.evaluation(20, "validation", {"loss": 0.5})
    writer.close()
    resumed = CurveWriter(str(tmp_path), ["loss"], resume_step=20)
    resumed.train(30, epoch=3.0, loss=0.01, learning_rate=0.1, tokens_per_second=6.0, mfu=0.5)
    resumed.close()
    text = (tmp_path / "logs" / "train.csv").read_text()
    header, rows = rows_up_to(text, 10**9)
    assert header[:3] == ["step", "epoch", "loss"]
    assert [(r["step"], r["loss"], r["mfu"]) for r in rows] == [
        ("10", "0.1", ""),
        ("20", "0.05", ""),
        ("30", "0.01", "0.5"),
    ]
    assert "validation" in (tmp_path / "logs" / "eval.csv").read_text()


def test_prepare_run_resolves_everything_the_workers_need(data: Path) -> None:
    settings, resolved = prepare_run(job(data, deepspeed={"zeroStage": 3}), str(data))
    assert resolved["plan"].total_steps == 4 and resolved["plan"].micro_batches_per_epoch == 8
    assert settings.deepspeed_config["zero_optimization"]["stage"] == 3
    assert settings.deepspeed_config["train_batch_size"] == 4
    assert settings.model_config["config"]["vocab_size"] == 40 and settings.precision == "fp32"
    assert settings.model_config["architecture"] == "llama" and settings.model_config["flops_per_token"] > 0
    assert settings.output_uri == output_uri(job(data)) == f"{data.parent / 'ckpt'}/model"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"workers": {"gpu": 2}}, r"spec.workers.gpu: 2: each worker process drives one GPU"),
        ({"deepspeed": {"config": {"zero_optimization": {"stage": 0}}}}, r"spec.deepspeed.config.zero_optimization"),
        ({"model": {"task": "classification"}}, r"spec.model.task: is classification but the dataset"),
        ({"model": {"lora": {"targetModules": ["attn"]}}}, r"spec.model.lora.targetModules: \['attn'\]"),
        ({"model": {"lora": {"quantization": "nf4"}}}, r"spec.model.lora.quantization: nf4: QLoRA .* CUDA GPUs"),
        ({"model": {"pretrained": {"uri": "/nowhere"}}}, r"spec.model.pretrained.uri: /nowhere does not exist"),
        ({"model": {"architecture": "gpt2", "kvHeads": 1}}, r"spec.model.kvHeads: architecture gpt2 has no"),
        ({"training": {"microBatchSize": 64}}, r"spec.training.microBatchSize: the train split has 32 rows"),
    ],
)
def test_bad_specs_fail_before_any_worker_starts(data: Path, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=rf"^TrainingJob/tj: {message}") as error:
        prepare_run(job(data, **spec), str(data))
    assert "\n" not in str(error.value)


def test_a_malformed_quantity_never_reaches_the_driver(data: Path) -> None:
    # The API (and the CRD's quantity pattern, on the server) refuses it before a driver could see it.
    with pytest.raises(ValueError, match=r"'1.2.3Gi' is not a Kubernetes quantity"):
        job(data, workers={"memory": "1.2.3Gi"})


def test_pretrained_model_with_another_tokenizer_is_refused(data: Path, tmp_path: Path) -> None:
    config = build_config("llama", vocab_size=40, hidden_size=8, layers=1, heads=2, context_length=16)
    model_dir = tmp_path / "pre"
    build_model(config).save_pretrained(model_dir)
    tokenizer(model_dir / "tokenizer.json", words=30)  # the dataset's 40-token tokenizer extends this one: fine
    prepare_run(job(data, model={"pretrained": {"uri": str(model_dir)}}), str(data))
    shuffled = {"<pad>": 0, "<eos>": 1, **{f"w{i}": 39 - i for i in range(38)}}
    Tokenizer(models.WordLevel(shuffled, unk_token="<pad>")).save(str(model_dir / "tokenizer.json"))
    with pytest.raises(SpecError, match=r"spec.model.pretrained: the dataset was tokenized with a tokenizer that"):
        prepare_run(job(data, model={"pretrained": {"uri": str(model_dir)}}), str(data))
