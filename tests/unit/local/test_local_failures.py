"""Permanent failures are not retried, transient ones are: the one classification (kubeforge.failures), the local
runner's retry loop and the operator's mapping of a failed RayJob (status.rayjob_state) that failurePolicy reads."""

from __future__ import annotations

import io

import pytest
from kubeforge import conditions as c
from kubeforge.failures import cause_line, exit_message, is_permanent, is_permanent_text
from kubeforge.local.plan import plan_run
from kubeforge.local.runner import LocalRun, RunOptions
from kubeforge.local.status import StatusStore
from kubeforge.status import rayjob_state
from kubeforge.validate import validate_paths
from kubeforge_trainer.train import SpecError, TrainingFailed

SIZE_MISMATCH = (
    "TrainingJob/gpt: training failed: RuntimeError: size mismatch for lm_head.weight: copying a param with shape "
    "torch.Size([512, 128]) from checkpoint, the shape in current model is torch.Size([512, 192])."
)


@pytest.mark.parametrize(
    ("text", "permanent"),
    [
        (SIZE_MISMATCH, True),
        ("kubeforge_trainer: permanent error: TrainingJob/gpt: spec.dataRef: no complete dataset at s3://b/d", True),
        ("FileNotFoundError: [Errno 2] No such file or directory: '/data/model/config.json'", True),
        ("DataPipeline/corpus: spec.source.uris: s3://b/x does not exist", True),
        ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task", False),
        ("Task was killed due to the node running low on memory (OOM)", False),
        ("worker OOM", False),
        ("The node with node id abc has been marked dead because the detector has missed too many heartbeats", False),
        ("OSError: When reading s3://b/x: AWS Error SLOW_DOWN during GetObject: SlowDown, retry", False),
        ("ConnectionError: Connection reset by peer", False),
        ("Training failed due to worker errors", False),  # unknown: retried, as before
    ],
)
def test_classification(text: str, permanent: bool) -> None:
    assert is_permanent_text(text) is permanent


def test_exceptions_are_classified_through_their_chain_and_marked_in_the_exit_line() -> None:
    try:
        try:
            raise RuntimeError(SIZE_MISMATCH.split("RuntimeError: ", 1)[1])
        except RuntimeError as exc:
            raise TrainingFailed(SIZE_MISMATCH) from exc
    except TrainingFailed as wrapped:
        assert is_permanent(wrapped)
        assert exit_message(wrapped) == f"kubeforge_trainer: permanent error: {SIZE_MISMATCH}"
    spec = SpecError("TrainingJob/gpt: spec.training.maxSteps: the checkpoints ...")
    assert is_permanent(spec) and exit_message(spec).startswith("kubeforge_trainer: permanent error: TrainingJob/")
    lost = TrainingFailed("TrainingJob/gpt: training failed: ActorDiedError: the actor died unexpectedly")
    assert not is_permanent(lost) and "permanent" not in exit_message(lost)


def rayjob(message: str) -> dict:
    status = {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": message}
    return {"metadata": {"name": "gpt-train"}, "status": status}


def test_the_operator_retries_only_a_failed_rayjob_that_may_heal() -> None:
    ray_message = (
        "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
        "  File ...\nRuntimeError: Error(s) in loading state_dict\n"
        f"kubeforge_trainer: permanent error: {SIZE_MISMATCH}\n"
    )
    state = rayjob_state(rayjob(ray_message))
    assert state.phase == "Failed" and not state.retryable
    assert state.message == f"Ray job of RayJob gpt-train failed: permanent error: {SIZE_MISMATCH}"
    assert rayjob_state(rayjob("worker OOM")).retryable
    assert cause_line("a\n\nb") == "a b"


@pytest.mark.parametrize(
    ("error", "calls", "phase"),
    [
        (SpecError("TrainingJob/gpt: spec.model.dModel: does not fit the checkpoint"), 1, "Failed"),
        (TrainingFailed(SIZE_MISMATCH), 1, "Failed"),
        (
            TrainingFailed("TrainingJob/gpt: training failed: ActorDiedError: the actor died unexpectedly"),
            2,
            "Succeeded",
        ),
    ],
)
def test_the_local_runner_retries_only_what_may_heal(
    write_manifests, tmp_path, monkeypatch, trainingjob, error, calls, phase
) -> None:
    monkeypatch.setattr(LocalRun, "start_ray", lambda self: None)  # the retry loop is what is tested, not Ray
    path = write_manifests(trainingjob("gpt", None))
    out = io.StringIO()
    run = LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), out)
    steps, _ = plan_run(validate_paths([path]).manifests, {})
    run._apply(steps)
    attempts = []

    def work(reporter):
        attempts.append(1)
        if len(attempts) == 1:
            raise error
        return {}

    outcome = run._run_job(steps[0], 1, {}, work, retries=3)
    assert (len(attempts), outcome.phase) == (calls, phase)
    status = StatusStore(tmp_path / ".kubeforge").get("TrainingJob", "gpt")
    assert status["phase"] == phase
    if phase == "Failed":
        assert str(error).split(":")[0] in c.get_condition(status["conditions"], c.FAILED)["message"]
        assert "retry" not in out.getvalue()
    else:
        assert status["retries"] == 1 and "retry 1/3 after: TrainingJob/gpt: training failed" in out.getvalue()
