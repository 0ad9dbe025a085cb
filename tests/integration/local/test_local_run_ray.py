"""`kubeforge run` on a real local Ray with the real entry points: serving a model directory, a data step that fails on
bad input, and Ctrl-C during training followed by a run that resumes from the last checkpoint."""

from __future__ import annotations

import signal
import time

import pytest
from kubeforge import conditions as c
from kubeforge.cli import main
from kubeforge.local.status import StatusStore
from support import cli_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serves_a_model_directory_answers_and_stops_with_the_run(
    write_docs, tiny_model_dir, ports, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    deployment = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny"},
        "spec": {
            "modelUri": str(tiny_model_dir),
            "resources": {"cpu": 1, "memory": "1Gi"},
            "generation": {"maxTokens": 8, "temperature": 0},
        },
    }
    path = write_docs(deployment)
    port, metrics_port = ports
    code = main(["run", str(path), "--port", str(port), "--metrics-port", str(metrics_port), "--prompt", "import"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"==> ModelDeployment/tiny at http://127.0.0.1:{port}" in out
    assert "completion: " in out
    assert f"curl -s http://127.0.0.1:{port}/v1/completions" in out

    status = StatusStore(tmp_path / ".kubeforge").get("ModelDeployment", "tiny")
    assert status["phase"] == "Suspended", "the endpoint went away with the run"
    assert status["url"] == f"http://127.0.0.1:{port}"
    assert status["modelVersion"] == "v1"
    assert status["traffic"] == [{"version": "v1", "modelUri": str(tiny_model_dir), "percent": 100}]
    assert status["replicas"] == 1
    assert c.get_condition(status["conditions"], c.READY)["reason"] == "LocalRunEnded"
    assert c.is_true(status["conditions"], c.MODEL_READY)

    report = next((tmp_path / ".kubeforge" / "report").glob("*/report.md")).read_text()
    assert "## Serving: ModelDeployment/tiny" in report
    assert "Prompt: `import`" in report


def test_a_data_step_that_fails_on_bad_input_fails_in_one_line_and_blocks_training(
    write_docs, tmp_path, monkeypatch, capsys, small_datapipeline, small_trainingjob
):
    monkeypatch.chdir(tmp_path)
    pipeline = small_datapipeline()
    pipeline["spec"]["source"] = {"uris": [str(tmp_path / "no-such-file.jsonl")], "format": "jsonl"}
    path = write_docs(pipeline, small_trainingjob())
    code = main(["run", str(path), "--plain"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Traceback" not in out
    failed = next(line for line in out.splitlines() if "✗ DataPipeline/corpus Failed" in line)
    assert "spec.source" in failed and "(traceback: .kubeforge/logs/" in failed
    assert "TrainingJob/gpt (Pending)" in out

    store = StatusStore(tmp_path / ".kubeforge")
    data = store.get("DataPipeline", "corpus")
    assert data["phase"] == "Failed"
    assert "spec.source" in c.get_condition(data["conditions"], c.FAILED)["message"]
    assert store.get("TrainingJob", "gpt")["phase"] == "Pending"
    log = next((tmp_path / ".kubeforge" / "logs").glob("*/DataPipeline-corpus.log")).read_text()
    assert "Traceback" in log


@pytest.mark.timeout(1800)
def test_ctrl_c_during_training_then_the_next_run_resumes_from_the_checkpoint(
    write_docs, tmp_path, small_datapipeline, small_trainingjob
):
    # Enough steps that an idle machine is still training when the first checkpoint shows in the status (written
    # at most once a second): 40 steps were all done by then on a quiet 2-core machine.
    steps = 300
    path = write_docs(small_datapipeline(), small_trainingjob(steps=steps, checkpoint_every=10))
    store = StatusStore(tmp_path / ".kubeforge")
    first = cli_process(["run", str(path), "--plain"], tmp_path)
    deadline = time.monotonic() + 780  # generous: a loaded or clean CI machine starts Ray and DeepSpeed slowly
    while not store.get("TrainingJob", "gpt").get("latestCheckpoint"):
        assert first.poll() is None, f"the run ended before a checkpoint: {first.communicate()[0]}"
        assert time.monotonic() < deadline, "no checkpoint within the deadline"
        time.sleep(0.1)
    interrupted_at = store.get("TrainingJob", "gpt")["step"]
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out
    assert "TrainingJob/gpt: interrupted; run the same command again to resume" in out
    assert "Traceback" not in out
    job = store.get("TrainingJob", "gpt")
    assert job["phase"] == "Suspended"
    assert c.get_condition(job["conditions"], c.SUSPENDED)["reason"] == "Interrupted"
    assert interrupted_at < steps

    second = cli_process(["run", str(path), "--plain"], tmp_path)
    out, _ = second.communicate(timeout=780)
    assert second.returncode == 0, out
    assert "DataPipeline/corpus" in out and "= up to date: Succeeded at generation 1" in out
    job = store.get("TrainingJob", "gpt")
    assert job["phase"] == "Succeeded"
    assert job["step"] == steps
    runs = sorted((tmp_path / ".kubeforge" / "logs").iterdir())
    assert len(runs) == 2
    assert "resuming from" in (runs[-1] / "run.log").read_text()
    rows = (tmp_path / "runs/gpt/checkpoints/logs/train.csv").read_text().splitlines()[1:]
    logged = [int(row.split(",")[0]) for row in rows]
    assert logged == sorted(set(logged)), "each step appears once in the loss curve after the resume"
