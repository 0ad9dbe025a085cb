"""Fine-tuning on two CPU workers: a local Hugging Face Llama-architecture directory becomes, through LoRA (peft)
under ZeRO-1, a classifier for a toy task whose answer is known (the word that ends each document decides the class).
The reported test metrics equal a recomputation from the exported model, early stopping and the best checkpoint
follow the logged validation curve, and the export's untouched weights are exactly the Hugging Face ones."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from kubeforge_trainer.train import run_trainingjob
from kubeforge_trainer.train.evaluation import is_improvement

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def recompute_metrics(model_dir, dataset, split: str) -> dict[str, float]:
    """Loss, accuracy and macro precision/recall/F1 of an exported classifier, one document at a time."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    table = pq.read_table(dataset / split)
    truth = table.column("label").to_pylist()
    losses, predicted = [], []
    with torch.no_grad():
        for ids, label in zip(table.column("input_ids").to_pylist(), truth, strict=True):
            logits = model(input_ids=torch.tensor([ids])).logits
            losses.append(float(F.cross_entropy(logits, torch.tensor([label]))))
            predicted.append(int(logits.argmax(-1)))
    per_class = []
    for c in range(model.config.num_labels):
        tp = sum(p == t == c for p, t in zip(predicted, truth, strict=True))
        n_pred, n_true = predicted.count(c), truth.count(c)
        if not n_pred and not n_true:
            continue
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        per_class.append((precision, recall, 2 * precision * recall / (precision + recall) if tp else 0.0))
    return {
        "loss": sum(losses) / len(losses),
        "accuracy": sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth),
        "precision": sum(c[0] for c in per_class) / len(per_class),
        "recall": sum(c[1] for c in per_class) / len(per_class),
        "f1": sum(c[2] for c in per_class) / len(per_class),
    }


def test_lora_classifier_fine_tuned_from_a_hugging_face_llama(
    ray_local, classification_dataset, hf_llama_dir, tmp_path, status_file, helpers
) -> None:
    root = tmp_path / "ckpt"
    job = helpers.make_job(
        "toy-classes",
        classification_dataset,
        root,
        model={
            "task": "classification",
            "pretrained": {"uri": str(hf_llama_dir)},
            "lora": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj", "o_proj"]},
        },
        training={"maxSteps": 60, "learningRate": 0.02, "warmupSteps": 0, "schedule": "constant"},
        deepspeed={"zeroStage": 1},
        evaluation={
            "intervalSteps": 4,
            "bestMetric": "accuracy",
            "bestMode": "max",
            "earlyStopping": {"metric": "loss", "mode": "min", "patience": 2, "minDelta": 0.01},
        },
        checkpoint={"intervalSteps": 1000, "keepLast": 1},
    )
    status = status_file("toy-classes")

    result = run_trainingjob(job, str(classification_dataset), status.reporter)

    # The toy task is learnable (the last word decides the class): far above the 1/3 of guessing.
    test = result["testMetrics"]
    assert set(test) == {"loss", "accuracy", "precision", "recall", "f1"}
    assert test["accuracy"] >= 0.9, test
    # The workers' distributed metrics equal a plain recomputation from the exported (best) model.
    recomputed = recompute_metrics(root / "model", classification_dataset, "test")
    assert recomputed == pytest.approx(test, rel=1e-5, abs=1e-6)

    # Early stopping and the best checkpoint follow the logged validation curve.
    evals = [r for r in helpers.read_csv_rows(root / "logs" / "eval.csv") if r["split"] == "validation"]
    accuracies = [(int(r["step"]), float(r["accuracy"])) for r in evals]
    assert [s for s, _ in accuracies] == list(range(4, result["steps"] + 1, 4))
    best, waited, stop_at = None, 0, None
    for row in evals:
        if is_improvement(float(row["loss"]), best, "min", 0.01):
            best, waited = float(row["loss"]), 0
        else:
            waited += 1
            if waited >= 2:
                stop_at = int(row["step"])
                break
    assert result["stoppedEarly"] is (stop_at is not None)
    assert result["steps"] == (stop_at or 60)
    assert result["bestStep"] == next(s for s, v in accuracies if v == max(v for _, v in accuracies))
    assert status.read()["stoppedEarly"] is result["stoppedEarly"]

    # LoRA trained only the adapters (merged into q/v/o on export) and the head; the rest is Hugging Face's.
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(root / "model")
    assert type(exported).__name__ == "LlamaForSequenceClassification"
    assert list(exported.config.id2label.values()) == ["file", "string", "object"]
    assert (exported.config.num_hidden_layers, exported.config.hidden_size) == (1, 32)
    base = dict(AutoModelForCausalLM.from_pretrained(hf_llama_dir).model.named_parameters())
    for name, mine in exported.model.named_parameters():
        weight = base[name]
        if name.endswith(("q_proj.weight", "v_proj.weight", "o_proj.weight")):
            assert not torch.equal(mine, weight), name
            assert torch.allclose(mine, weight, atol=0.5), name  # a low-rank update, not a different matrix
        else:
            assert torch.equal(mine, weight), name
