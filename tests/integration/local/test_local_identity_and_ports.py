"""`kubeforge run` on a real local Ray: a run's identity decides what it resumes (an edited, an extended, a
reverted maxSteps and a changed architecture), and runs bind no fixed port (8080 taken; two runs side by side)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from kubeforge.cli import main
from kubeforge.local.status import StatusStore
from kubeforge_trainer.train.synthetic import write_dataset
from support import cli_process
from tokenizers import Tokenizer, models

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tiny_dataset(root: Path) -> Path:
    """32 rows of 9 tokens from a 32-word vocabulary: a few seconds of training."""
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(30)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<pad>")).save(str(root / "tok.json"))
    rows = [[2 + (i * 7 + j) % 30 for j in range(9)] for i in range(32)]
    return write_dataset(
        root / "data",
        task="languageModeling",
        sequence_length=9,
        tokenizer_file=root / "tok.json",
        vocab_size=32,
        splits={"train": rows},
        eos_token_id=1,
    )


def trainingjob(data: Path, steps: int, d_model: int = 8, extend: bool = False) -> dict:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "gpt"},
        "spec": {
            "dataRef": {"uri": str(data)},
            "model": {"layers": 1, "heads": 2, "hiddenSize": d_model, "contextLength": 8},
            "training": {"maxSteps": steps, "microBatchSize": 4, "logIntervalSteps": 1},
            "checkpoint": {"uri": "runs/gpt/checkpoints", "intervalSteps": 2, "extend": extend},
            "workers": {"count": 1, "cpu": 1, "memory": "1Gi"},
            "failurePolicy": {"maxRetries": 1},
        },
    }


@pytest.mark.timeout(900)
def test_an_edited_run_never_loads_a_foreign_checkpoint_nor_goes_past_its_steps(
    write_docs, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    data = tiny_dataset(tmp_path)
    store = StatusStore(tmp_path / ".kubeforge")

    def run(**spec) -> tuple[int, str, dict]:
        code = main(["run", str(write_docs(trainingjob(data, **spec))), "--plain"])
        return code, capsys.readouterr().out, store.get("TrainingJob", "gpt")

    code, out, job = run(steps=4)
    assert code == 0, out
    assert (job["step"], job["totalSteps"], job["resumedFromStep"]) == (4, 4, 0)
    assert main(["logs", "tj/gpt"]) == 0
    logged = capsys.readouterr().out
    assert all(f"step {n}/4 loss " in logged for n in (1, 2, 3, 4)), logged

    code, out, job = run(steps=6)  # edited: the same run planned longer, continued only when asked
    assert code == 1 and "Traceback" not in out and "retry 1/1" not in out and "not retried" in out, out
    assert "spec.training.maxSteps: " in job["message"] and "spec.checkpoint.extend: true" in job["message"]

    code, out, job = run(steps=6, extend=True)
    assert code == 0, out
    assert "resuming from " in out and "step-00000004 (step 4); extending the run from 4 to 6 steps" in out
    assert (job["step"], job["totalSteps"], job["resumedFromStep"]) == (6, 6, 4)
    assert job["modelVersion"].startswith("v6-")

    code, out, job = run(steps=4)  # reverted: never trained or reported as 6/4
    assert code == 1 and "past the 4 steps this spec plans" in job["message"], out
    assert job.get("step") in (None, 0) and "6/4" not in out

    code, out, job = run(steps=6, d_model=16)  # another architecture: its checkpoints are never loaded
    assert code == 1 and "spec.model.hiddenSize 8 -> 16" in job["message"], out
    assert "size mismatch" not in out

    assert main(["delete", "trainingjob/gpt", "--yes"]) == 0
    assert not (tmp_path / "runs" / "gpt" / "checkpoints").exists() and store.get("TrainingJob", "gpt") == {}
    code, out, job = run(steps=2, d_model=16)  # after the delete, the new configuration starts afresh
    assert code == 0 and job["resumedFromStep"] == 0, out


@pytest.mark.timeout(900)
def test_two_runs_side_by_side_with_8080_taken(write_docs, tmp_path):
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 8080))
        taken.listen()
    except OSError:
        pass  # already taken by another process: the same situation
    try:
        runs = []
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            tiny_dataset(workdir)
            job = trainingjob(workdir / "data", steps=2)
            (workdir / "job.yaml").write_text(yaml.safe_dump(job))
            runs.append(cli_process(["run", "job.yaml", "--plain"], workdir))
        for process in runs:
            out, _ = process.communicate(timeout=600)
            assert process.returncode == 0, out
            assert "Succeeded" in out and "could not start a local Ray" not in out
    finally:
        taken.close()
