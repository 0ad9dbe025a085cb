"""Local state the user manages: `kubeforge logs` (and -f), `kubeforge delete`, a copied manifest directory that
must not take over the original's state, and `kubeforge status -o json | head` without a traceback."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from kubeforge.cli import main
from kubeforge.local.manage import delete_resource, print_logs
from kubeforge.local.runner import LocalRun, RunOptions
from kubeforge.local.status import StatusStore


def test_logs_prints_the_newest_run_and_follows_until_the_step_ends(tmp_path, capsys):
    state = tmp_path / ".kubeforge"
    old, new = state / "logs" / "20261206-010000", state / "logs" / "20261206-020000"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    (old / "TrainingJob-gpt.log").write_text("old run\n")
    log = new / "TrainingJob-gpt.log"
    log.write_text("step 1/3 loss 2.0000 eta 2s\n")
    store = StatusStore(state)
    store.put("TrainingJob", "gpt", {"phase": "Running"})

    def train() -> None:
        for step in (2, 3):
            time.sleep(0.3)
            with log.open("a") as f:
                f.write(f"step {step}/3 loss 1.0000 eta 0s\n")
        store.put("TrainingJob", "gpt", {"phase": "Succeeded"})

    writer = threading.Thread(target=train)
    writer.start()
    out = io.StringIO()
    assert print_logs(state, "TrainingJob", "gpt", follow=True, out=out) == 0
    writer.join()
    assert [line.split(" loss")[0] for line in out.getvalue().splitlines()] == ["step 1/3", "step 2/3", "step 3/3"]

    assert main(["logs", "tj/gpt", "--state-dir", str(state)]) == 0
    assert "step 3/3" in capsys.readouterr().out
    assert main(["logs", "gpt", "--state-dir", str(state)]) == 1
    assert main(["logs", "dp/none", "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err
    assert "expected KIND/NAME" in err and "no log of DataPipeline/none" in err


def stored_trainingjob(state: Path, checkpoints: Path) -> None:
    resource = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "gpt", "generation": 1},
        "spec": {"checkpoint": {"uri": str(checkpoints)}, "output": {"uri": None}},
    }
    (state / "resources" / "TrainingJob").mkdir(parents=True)
    (state / "resources" / "TrainingJob" / "gpt.json").write_text(json.dumps(resource))
    StatusStore(state).put("TrainingJob", "gpt", {"phase": "Succeeded"})
    (state / "logs" / "r1").mkdir(parents=True)
    (state / "logs" / "r1" / "TrainingJob-gpt.log").write_text("x\n")
    (checkpoints / "step-00000004").mkdir(parents=True)


def test_delete_asks_then_removes_state_logs_and_owned_outputs(tmp_path, capsys):
    state, checkpoints = tmp_path / ".kubeforge", tmp_path / "runs" / "gpt" / "checkpoints"
    stored_trainingjob(state, checkpoints)
    questions = []
    assert delete_resource(state, "TrainingJob", "gpt", yes=False, ask=lambda q: questions.append(q) or "n") == 1
    assert checkpoints.exists() and StatusStore(state).get("TrainingJob", "gpt")
    assert questions == [f"delete TrainingJob/gpt: its status, output {checkpoints}, 1 log file(s)? [y/N] "]

    assert delete_resource(state, "TrainingJob", "gpt", yes=False, ask=lambda q: "y") == 0
    assert not checkpoints.exists() and (tmp_path / "runs" / "gpt").exists()
    assert StatusStore(state).get("TrainingJob", "gpt") == {}
    assert (
        not list((state / "logs").glob("*/*.log")) and not (state / "resources" / "TrainingJob" / "gpt.json").exists()
    )
    assert main(["delete", "trainingjob/gpt", "--yes", "--state-dir", str(state)]) == 1
    assert "TrainingJob/gpt not found" in capsys.readouterr().err


def test_a_copied_manifest_directory_does_not_take_over_the_originals_state(write_manifests, tmp_path, trainingjob):
    job = trainingjob("gpt", None)
    job["spec"]["dataRef"]["uri"] = "missing"  # fails before Ray: the state handling is what is tested
    original = write_manifests(job, name="original.yaml")
    (tmp_path / "copy").mkdir()
    same_outputs = shutil.copy(original, tmp_path / "copy" / "same.yaml")
    job["spec"]["checkpoint"]["uri"] = "runs/gpt-copy/checkpoints"
    elsewhere = write_manifests(job, name="copy/elsewhere.yaml")

    def run(path: Path) -> tuple[int, str]:
        err = io.StringIO()
        sys_stderr, sys.stderr = sys.stderr, err
        try:
            code = LocalRun(
                RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), io.StringIO()
            ).run()
        finally:
            sys.stderr = sys_stderr
        return code, err.getvalue()

    assert run(original)[0] == 1  # the missing dataset
    StatusStore(tmp_path / ".kubeforge").put("TrainingJob", "gpt", {"step": 7})
    code, err = run(elsewhere)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "TrainingJob/gpt from " in err and "kubeforge delete trainingjob/gpt" in err
    assert StatusStore(tmp_path / ".kubeforge").get("TrainingJob", "gpt")["step"] == 7, "the original's state is kept"
    code, err = run(Path(same_outputs))
    assert "writes to" not in err, "a copy writing to the same outputs shares their state"


def test_status_into_a_closed_pipe_is_no_traceback(tmp_path):
    store = StatusStore(tmp_path / ".kubeforge")
    for i in range(2000):
        store.put("TrainingJob", f"job-{i}", {"phase": "Succeeded", "step": i})
    command = [
        sys.executable,
        "-m",
        "kubeforge.cli",
        "status",
        "-o",
        "json",
        "--state-dir",
        str(tmp_path / ".kubeforge"),
    ]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout is not None
    producer.stdout.readline()
    producer.stdout.close()  # what `| head -1` does
    _, err = producer.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert producer.returncode == 0


def test_counted_nouns() -> None:
    from kubeforge.wording import plural

    assert [plural(n, "token") for n in (0, 1, 2)] == ["0 tokens", "1 token", "2 tokens"]
    assert plural(1, "new token") == "1 new token" and plural(3, "replica") == "3 replicas"


def test_ports_are_fixed_only_when_named_or_served(write_manifests, tmp_path, capsys, trainingjob, modeldeployment):
    import socket

    from kubeforge.local.plan import plan_run
    from kubeforge.validate import validate_paths

    job = trainingjob("gpt", None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        path = write_manifests(job)
        # A named port that is taken: one line, before Ray starts, even with nothing to serve.
        assert main(["run", str(path), "--metrics-port", str(taken)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"kubeforge run: port {taken} (--metrics-port) is in use; name another one, or leave it out for a free one\n"
    )

    def metrics_port(*docs: dict, named: int | None = None) -> int | None:
        path = write_manifests(*docs)
        run = LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, metrics_port=named, num_cpus=4), io.StringIO())
        run._apply(plan_run(validate_paths([path]).manifests, {})[0])
        return run._metrics_port()

    assert metrics_port(job) is None, "nothing served: Ray picks its own metrics port"
    assert metrics_port(job, named=9999) == 9999
    served = metrics_port(job, modeldeployment("md", "gpt"))
    assert isinstance(served, int) and served not in (8080, 0)
