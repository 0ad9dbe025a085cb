"""`kubeforge run` on bad input (one line per problem, exit 1, nothing started) and `kubeforge status`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubeforge.cli import main
from kubeforge.local.status import StatusStore


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubeforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_invalid_manifest_is_one_line_per_problem_and_nothing_runs(
    write_manifests, tmp_path, datapipeline, trainingjob
):
    bad = trainingjob()
    bad["spec"]["training"]["learningRate"] = -1
    path = write_manifests(datapipeline(), bad)
    result = run_cli(["run", str(path)], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{path}#2: TrainingJob/gpt: spec.training.learningRate: must be greater than 0 (got -1)"
    assert lines[-1] == "1 problem(s) found; nothing was run"
    assert not (tmp_path / ".kubeforge").exists(), "a rejected run leaves no state behind"


def test_dangling_reference_is_reported_before_anything_starts(write_manifests, tmp_path, trainingjob, modeldeployment):
    path = write_manifests(trainingjob("gpt", "missing"), modeldeployment("md", "gpt"))
    result = run_cli(["run", str(path)], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "TrainingJob/gpt: spec.dataRef.name: DataPipeline 'missing' not found" in result.stderr
    assert not (tmp_path / ".kubeforge").exists()


def test_missing_path(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_busy_port_is_reported_before_anything_starts(write_manifests, tmp_path, capsys, monkeypatch, modeldeployment):
    import socket

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        doc = modeldeployment("md")
        doc["spec"] = {"modelUri": str(tmp_path / "model")}
        path = write_manifests(doc)
        assert main(["run", str(path), "--port", str(port)]) == 1
    assert f"port {port} is in use; pass --port" in capsys.readouterr().err


@pytest.fixture
def state(tmp_path: Path) -> Path:
    store = StatusStore(tmp_path / ".kubeforge")
    store.put("DataPipeline", "corpus", {"phase": "Succeeded", "rowsIn": 6000, "rowsOut": 4100, "tokens": 900000})
    store.put("TrainingJob", "gpt", {"phase": "Running", "step": 40, "totalSteps": 300, "loss": 3.5})
    store.put("ModelDeployment", "gpt", {"phase": "Suspended", "url": "http://127.0.0.1:8000"})
    return tmp_path


def test_status_table_lists_every_resource(state, capsys, monkeypatch):
    monkeypatch.chdir(state)
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PHASE", "PROGRESS", "METRICS", "AGE"]
    assert lines[1].split()[:3] == ["DataPipeline", "corpus", "Succeeded"]
    assert "rows 6.0k -> 4.1k · tokens 900.0k" in lines[1]
    assert lines[2].split()[:4] == ["TrainingJob", "gpt", "Running", "40/300"]
    assert lines[3].split()[:3] == ["ModelDeployment", "gpt", "Suspended"]


def test_status_selects_by_name_or_kind_and_name(state, capsys):
    assert main(["status", "--state-dir", str(state / ".kubeforge"), "gpt"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["TrainingJob", "ModelDeployment"]
    assert main(["status", "--state-dir", str(state / ".kubeforge"), "tj/gpt", "-o", "json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [(i["kind"], i["name"], i["status"]["step"]) for i in items] == [("TrainingJob", "gpt", 40)]


def test_status_errors_are_one_line(state, tmp_path, capsys):
    assert main(["status", "--state-dir", str(state / ".kubeforge"), "pods/x"]) == 1
    assert "pods/x: unknown kind" in capsys.readouterr().err
    assert main(["status", "--state-dir", str(state / ".kubeforge"), "nothing"]) == 1
    assert "no nothing found" in capsys.readouterr().err
    assert main(["status", "--state-dir", str(tmp_path / "empty")]) == 1
    assert "holds no status yet); run `kubeforge run DIR` first" in capsys.readouterr().err
