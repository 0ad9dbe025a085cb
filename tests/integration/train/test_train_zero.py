"""ZeRO stages 0-3 on two CPU workers (gloo), pre-training a tiny Llama-architecture model from scratch: loss
decreases, checkpoints hold the exact consolidated weights, retention keeps the last K plus the best, the export is a
plain Hugging Face directory that transformers loads and generates with, and the reported metrics match a
recomputation from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from kubeforge_trainer.models import read_model_info
from kubeforge_trainer.train import run_trainingjob
from kubeforge_trainer.train.checkpointing import complete_checkpoints

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def lm_loss_on_split(model_dir: Path, dataset: Path, split: str) -> float:
    """Mean next-token loss of a model directory on a whole split, computed here without Ray or DeepSpeed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)  # plain transformers, nothing of kubeforge
    ids = torch.tensor(pq.read_table(dataset / split).column("input_ids").to_pylist(), dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits
        return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_trains_checkpoints_and_exports(
    stage, ray_local, lm_dataset, tmp_path, status_file, helpers
) -> None:
    name = f"zero{stage}"
    root = tmp_path / "ckpt"
    # Stages 1 and 3 keep the checkpoint with the *highest* validation loss as "best": the first evaluation, so the
    # final test must load an earlier checkpoint's weights back into the engine (ZeRO-3: from its shards).
    evaluation = {"bestMode": "max"} if stage % 2 else {}
    job = helpers.make_job(name, lm_dataset, root, deepspeed={"zeroStage": stage}, evaluation=evaluation)
    status = status_file(name)

    result = run_trainingjob(job, str(lm_dataset), status.reporter)

    # Every planned step ran, and the loss went down.
    assert result["steps"] == 24 and result["totalSteps"] == 24 and result["resumedFromStep"] == 0
    assert result["stoppedEarly"] is False
    rows = helpers.read_csv_rows(root / "logs" / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(2, 25, 2))
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.4, losses

    # Retention: the last checkpoint (keepLast 1) and the best one, nothing else, no temporary directories.
    best_step = result["bestStep"]
    evals = [r for r in helpers.read_csv_rows(root / "logs" / "eval.csv") if r["split"] == "validation"]
    assert [int(r["step"]) for r in evals] == [8, 16, 24]
    val_losses = [float(r["loss"]) for r in evals]
    pick = max if stage % 2 else min
    assert best_step == 8 * (1 + val_losses.index(pick(val_losses)))
    assert complete_checkpoints(str(root)) == sorted({best_step, 24})
    assert not list(root.glob(".tmp-*"))
    best = root / f"step-{best_step:08d}"
    assert result["bestCheckpoint"] == str(best)

    # A checkpoint holds the resolved config, the trainer state, DeepSpeed's shards and the consolidated weights:
    # the weights gathered from the shards give exactly the validation loss the workers measured.
    config = json.loads((best / "training_config.json").read_text())
    assert config["deepspeed"]["zero_optimization"]["stage"] == stage
    assert config["precision"] == "fp32" and config["spec"]["training"]["precision"] == "bf16"
    assert json.loads((best / "trainer_state.json").read_text())["step"] == best_step
    assert (best / "_COMPLETE").is_file() and any((best / "deepspeed").iterdir())
    assert lm_loss_on_split(best, lm_dataset, "validation") == pytest.approx(result["bestMetrics"]["loss"], rel=1e-4)

    # The export is the best checkpoint's model; its test metrics are what the workers reported.
    model_dir = root / "model"
    assert result["modelUri"] == str(model_dir)
    info = read_model_info(model_dir)
    assert info["version"] == result["modelVersion"] == f"v{best_step}-{info['runId']}"
    assert info["packageVersion"] and info["metrics"]["test"] == result["testMetrics"]
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert files <= {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} | {
        "tokenizer_config.json",
        "kubeforge.json",
        "metrics.json",
    }, files  # no checkpoint or DeepSpeed files (trainer_state.json, latest, zero_to_fp32.py, ...)
    lineage = info["lineage"]
    assert lineage["dataset"] == str(lm_dataset) and lineage["baseModel"] is None
    assert len(lineage["datasetManifestSha256"]) == 64
    if stage == 2:
        # Plain transformers: tokenizer and model from the export, greedy generation of new tokens.
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
        prompt = tokenizer("Return the value of", return_tensors="pt")
        generated = AutoModelForCausalLM.from_pretrained(model_dir).generate(
            **prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5
        )
        assert generated.shape[1] == prompt["input_ids"].shape[1] + 5
    test_loss = lm_loss_on_split(model_dir, lm_dataset, "test")
    assert result["testMetrics"]["loss"] == pytest.approx(test_loss, rel=1e-4)
    assert result["testMetrics"]["perplexity"] == pytest.approx(math.exp(test_loss), rel=1e-4)
    assert json.loads((model_dir / "metrics.json").read_text())["testMetrics"] == result["testMetrics"]

    # The status carries progress and the outcome.
    reported = status.read()
    assert reported["step"] == 24 and reported["totalSteps"] == 24
    assert reported["modelUri"] == str(model_dir) and reported["modelVersion"] == result["modelVersion"]
    assert reported["testMetrics"] == result["testMetrics"] and reported["bestCheckpoint"] == str(best)
    assert reported["tokensPerSecond"] > 0 and "mfu" in reported and reported["epoch"] == pytest.approx(24 / 32)
    assert set(reported["evalMetrics"]) == {"loss", "perplexity"}
