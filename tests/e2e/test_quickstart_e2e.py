"""The quickstart end to end at reduced sizes, through the real `kubeforge run` command: data, training and serving on
a local Ray, queries to the live endpoint and its metrics, the status files, the report, and a second run that
finds the data and the model up to date instead of redoing them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import cli_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

READY_LINE = "press Ctrl-C to stop"


def read_until(process: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """Lines of the process's output up to the one containing marker (fails on exit or timeout)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
        assert time.monotonic() < deadline, "timed out:\n" + "\n".join(lines)
    raise AssertionError(f"exited with {process.wait()} before {marker!r}:\n" + "\n".join(lines))


def http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def status_of(cwd: Path, kind: str, name: str) -> dict:
    return json.loads((cwd / ".kubeforge" / "status" / kind / f"{name}.json").read_text())


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_reduced_quickstart_end_to_end(reduced_quickstart: Path, free_port):
    workdir = reduced_quickstart.parent
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    run = cli_process(
        [
            "run",
            str(reduced_quickstart),
            "--serve",
            "--plain",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        workdir,
    )
    try:
        # Generous: a clean machine also JIT-compiles DeepSpeed's comm op (~1 min) inside the first training run.
        output = read_until(run, READY_LINE, timeout=780)
        text = "\n".join(output)
        assert "Traceback" not in text
        for label in ("DataPipeline/quickstart-corpus", "TrainingJob/quickstart-gpt", "ModelDeployment/quickstart-gpt"):
            assert label in text
        assert text.count("✓ Succeeded") == 2 and "✓ Ready" in text
        assert "completion: " in text
        assert f"curl -s {base}/v1/completions" in text

        # The endpoint serves the model the training step just exported.
        job = status_of(workdir, "TrainingJob", "quickstart-gpt")
        answer = http_json(f"{base}/v1/completions", {"prompt": "The Python", "max_tokens": 8, "temperature": 0})
        assert isinstance(answer["choices"][0]["text"], str)
        assert answer["usage"]["completion_tokens"] > 0
        assert answer["version"] == job["modelVersion"]
        models = http_json(f"{base}/v1/models")
        assert job["modelVersion"] in json.dumps(models)
        deadline, metrics = time.monotonic() + 60, ""
        while "kubeforge_inference_" not in metrics:
            assert time.monotonic() < deadline, "no kubeforge_inference_ metrics on /metrics"
            time.sleep(2)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
                metrics = response.read().decode()

        # Status written as the operator would, and `kubeforge status` shows it.
        data = status_of(workdir, "DataPipeline", "quickstart-corpus")
        assert data["phase"] == "Succeeded" and condition(data, "Ready")["status"] == "True"
        dedup = {op["name"]: op for op in data["operations"]}["exactDedup"]
        assert dedup["rowsOut"] < dedup["rowsIn"], "the system docs hold real exact duplicates"
        assert (Path(data["outputUri"]) / "_manifest.json").is_file()
        assert job["phase"] == "Succeeded" and job["step"] == job["totalSteps"] == 20
        # The operator's conditions (one status machine): DataReady on the TrainingJob, ModelReady on the deployment.
        assert condition(job, "DataReady")["status"] == "True" and condition(job, "Ready")["status"] == "True"
        assert set(job["testMetrics"]) >= {"loss", "perplexity"}
        assert (Path(job["modelUri"]) / "model.safetensors").is_file()
        serving = status_of(workdir, "ModelDeployment", "quickstart-gpt")
        assert serving["phase"] == "Ready" and serving["url"] == base and serving["readyReplicas"] == 1
        assert condition(serving, "ModelReady")["status"] == "True"
        table = subprocess.run(
            [sys.executable, "-m", "kubeforge.cli", "status"], cwd=workdir, capture_output=True, text=True, timeout=60
        )
        rows = [line.split()[:3] for line in table.stdout.splitlines()[1:]]
        assert rows == [
            ["DataPipeline", "quickstart-corpus", "Succeeded"],
            ["TrainingJob", "quickstart-gpt", "Succeeded"],
            ["ModelDeployment", "quickstart-gpt", "Ready"],
        ]
    finally:
        run.send_signal(signal.SIGINT)
        rest, _ = run.communicate(timeout=120)
    assert run.returncode == 0, rest
    assert status_of(workdir, "ModelDeployment", "quickstart-gpt")["phase"] == "Suspended"

    # The report: data statistics per operation, the curves, test metrics, the endpoint.
    report_dir = next((workdir / ".kubeforge" / "report").iterdir())
    report = (report_dir / "report.md").read_text()
    assert "| exactDedup |" in report and "| nearDedup |" in report
    assert "![loss and evaluation curves](training-quickstart-gpt.png)" in report
    assert "| test |" in report
    assert f"Endpoint `{base}`" in report
    for png in ("training-quickstart-gpt.png", "data-quickstart-corpus.png"):
        assert (report_dir / png).read_bytes().startswith(b"\x89PNG")

    # A second run redoes nothing that is done: data and model are up to date; only the endpoint comes up again.
    port2 = free_port()
    again = cli_process(
        ["run", str(reduced_quickstart), "--plain", "--port", str(port2), "--metrics-port", str(free_port())],
        workdir,
    )
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert out.count("= up to date: Succeeded at generation 1") == 2, out
    assert "completion: " in out
    assert status_of(workdir, "TrainingJob", "quickstart-gpt")["completionTime"] == job["completionTime"]
    assert status_of(workdir, "DataPipeline", "quickstart-corpus")["completionTime"] == data["completionTime"]
