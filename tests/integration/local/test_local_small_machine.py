"""`kubeforge run --num-cpus 1`: a DataPipeline with every kind of step runs to the end on a one-CPU local Ray (one
worker takes the warm-up task and then every block, map and reduce task in turn)."""

from __future__ import annotations

import time

import pytest
from kubeforge.cli import main
from kubeforge.local.status import StatusStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_a_datapipeline_runs_on_one_cpu(write_docs, ports, tmp_path, monkeypatch, capsys, small_datapipeline) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = small_datapipeline(max_documents=400)
    # The fused cleaning pass, both dedups (a reduce after a map), tokenizer training and a split: every task kind.
    pipeline["spec"]["steps"] = [
        {"stripHtml": {}},
        {"collapseWhitespace": {}},
        {"lengthFilter": {"minChars": 64}},
        {"exactDedup": {}},
        {"nearDedup": {"threshold": 0.8, "numPerm": 32, "bands": 8}},
    ]
    path = write_docs(pipeline)
    started = time.monotonic()
    code = main(["run", str(path), "--plain", "--num-cpus", "1", "--metrics-port", str(ports[1])])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0, out
    assert "starting a local Ray (1 CPUs)" in out
    status = StatusStore(tmp_path / ".kubeforge").get("DataPipeline", "corpus")
    assert status["phase"] == "Succeeded", status
    assert status["rowsOut"] > 0
    print(f"one-CPU DataPipeline run: {elapsed:.1f} s")  # shown with -s; the test's bound is its timeout
