"""Checkpoint names, the retention policy, finding the checkpoint to resume from, and the trainer state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubeforge_trainer.train import SpecError
from kubeforge_trainer.train import checkpointing as ckpt


def make_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / ckpt.checkpoint_name(step)
    (path / "deepspeed").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / ckpt.MARKER).write_text("{}")
    return path


def test_names_sort_as_text_and_parse_back() -> None:
    assert ckpt.checkpoint_name(100) == "step-00000100"
    assert sorted(ckpt.checkpoint_name(s) for s in (9, 100, 10)) == [ckpt.checkpoint_name(s) for s in (9, 10, 100)]
    assert ckpt.parse_checkpoint_step("step-00000100") == 100
    assert ckpt.parse_checkpoint_step(".tmp-step-00000100") is None
    assert ckpt.parse_checkpoint_step("model") is None


@pytest.mark.parametrize(
    ("steps", "keep_last", "best", "deleted"),
    [
        ([10, 20, 30, 40], 2, None, [10, 20]),
        ([10, 20, 30, 40], 2, 10, [20]),
        ([10, 20, 30, 40], 2, 40, [10, 20]),
        ([10], 3, None, []),
        ([40, 10, 30, 20], 1, 20, [10, 30]),
    ],
)
def test_retention_keeps_the_last_k_and_the_best(steps, keep_last, best, deleted) -> None:
    assert ckpt.checkpoints_to_delete(steps, keep_last, best) == deleted


def test_latest_ignores_incomplete_checkpoints(tmp_path: Path) -> None:
    assert ckpt.latest_checkpoint(str(tmp_path / "none")) is None
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, complete=False)  # killed mid-save
    (tmp_path / ".tmp-step-00000040").mkdir()
    (tmp_path / "model").mkdir()
    assert ckpt.list_checkpoints(str(tmp_path)) == {10: True, 20: True, 30: False}
    assert ckpt.latest_checkpoint(str(tmp_path)) == f"{tmp_path}/step-00000020"
    assert ckpt.latest_checkpoint(f"file://{tmp_path}") == f"file://{tmp_path}/step-00000020"


def test_apply_retention_removes_old_and_stale_incomplete(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 35, complete=False)
    deleted = ckpt.apply_retention(str(tmp_path), keep_last=1, best_step=20)
    assert deleted == [10, 30, 35]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000020", "step-00000040"]


def test_clear_checkpoints_leaves_other_files(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 10)
    (tmp_path / ".tmp-step-00000020").mkdir()
    (tmp_path / "model").mkdir()
    assert ckpt.clear_checkpoints(str(tmp_path)) == [10, 20]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_trainer_state_round_trip_and_trackers() -> None:
    state = ckpt.TrainerState(run_id="abc", step=7, micro_batches_done=14)
    state.best = {"metric": "loss", "mode": "min", "value": 1.5, "step": 6, "metrics": {"loss": 1.5}}
    state.early_stopping = {"best": 1.5, "evals_without_improvement": 1, "should_stop": False}
    again = ckpt.TrainerState.from_dict({**state.to_dict(), "unknown": 1})
    assert again == state
    assert again.best_tracker("loss", "min").step == 6
    assert again.best_tracker("f1", "max").step is None  # a changed best metric starts afresh
    assert again.early_stopping_state().evals_without_improvement == 1
    assert ckpt.model_version("abc", 300) == "v300-abc"


# ---------------------------------------------------------------- run identity and the resume decision

SPEC = {
    "dataRef": {"name": "corpus"},
    "model": {"layers": 2, "hiddenSize": 128, "pretrained": None},
    "training": {"maxSteps": 300, "learningRate": 2e-4, "logIntervalSteps": 10, "betas": [0.9, 0.95]},
    "evaluation": {"intervalSteps": 50},
    "checkpoint": {"uri": "runs/gpt/checkpoints", "intervalSteps": 100},
    "workers": {"count": 2, "cpu": 1, "memory": "2Gi"},
    "failurePolicy": {"maxRetries": 1},
    "suspend": False,
}


def edited(path: str, value: object) -> dict:
    """SPEC with one dotted field set (added when it is new)."""
    spec = json.loads(json.dumps(SPEC))
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


def test_identity_keeps_training_fields_and_drops_length_places_and_reporting() -> None:
    identity = ckpt.run_identity(SPEC, "d" * 64)
    assert identity["model.hiddenSize"] == 128 and identity["training.learningRate"] == 2e-4
    assert identity["workers.count"] == 2 and identity["dataset"] == "d" * 64
    dropped = ("training.maxSteps", "training.logIntervalSteps", "evaluation.intervalSteps", "checkpoint.uri")
    assert not set(dropped) & set(identity)
    assert not any(k.startswith(("failurePolicy", "dataRef", "workers.cpu", "suspend")) for k in identity)


@pytest.mark.parametrize(
    ("path", "value", "same"),
    [
        ("training.maxSteps", 400, True),  # the length is checked on its own (decide_resume)
        ("checkpoint.intervalSteps", 10, True),
        ("evaluation.intervalSteps", 7, True),
        ("failurePolicy.maxRetries", 3, True),
        ("workers.memory", "4Gi", True),
        ("pod.env", [{"name": "AWS_REGION", "value": "eu-west-1"}], True),
        ("model.hiddenSize", 192, False),
        ("training.learningRate", 3e-4, False),
        ("workers.count", 4, False),
        ("deepspeed.zeroStage", 3, False),
        # Fields the API does not have yet count without an edit to the identity function.
        ("model.architecture", {"family": "llama"}, False),
        ("objective", {"type": "dpo"}, False),
    ],
)
def test_fingerprint_changes_exactly_with_training_relevant_fields(path: str, value: object, same: bool) -> None:
    before = ckpt.fingerprint(ckpt.run_identity(SPEC, "d"))
    after = ckpt.fingerprint(ckpt.run_identity(edited(path, value), "d"))
    assert (before == after) is same


def test_dataset_hash_ignores_write_times_but_not_content() -> None:
    manifest = {"task": "languageModeling", "splits": {"train": {"rows": 10}}, "createdAt": "a", "timings": {"x": 1}}
    rewritten = {**manifest, "createdAt": "b", "timings": {"x": 2}}
    other = {**manifest, "splits": {"train": {"rows": 11}}}
    assert ckpt.dataset_hash(manifest) == ckpt.dataset_hash(rewritten) != ckpt.dataset_hash(other)


def saved(identity: dict, step: int, planned: int | None) -> ckpt.TrainerState:
    return ckpt.TrainerState(run_id="r1", step=step, identity=identity, planned_steps=planned)


LATEST = "/runs/gpt/checkpoints/step-00000300"


def decide(state: ckpt.TrainerState | None, spec: dict = SPEC, planned: int = 300, extend: bool = False):
    identity = ckpt.run_identity(spec, "d")
    latest = LATEST if state is not None else None
    return ckpt.decide_resume("gpt", latest, state, identity, planned, "spec.training.maxSteps", extend)


def test_resume_only_from_a_checkpoint_of_the_same_run() -> None:
    assert decide(None) == ckpt.ResumeDecision()
    state = saved(ckpt.run_identity(SPEC, "d"), 150, 300)  # Ctrl-C at step 150
    assert decide(state) == ckpt.ResumeDecision(LATEST, 150)
    assert decide(saved(ckpt.run_identity(SPEC, "d"), 300, 300)).step == 300  # finished: re-test and re-export


def test_a_changed_architecture_is_refused_naming_the_field_and_the_ways_out() -> None:
    state = saved(ckpt.run_identity(SPEC, "d"), 300, 300)
    with pytest.raises(SpecError) as raised:
        decide(state, spec=edited("model.hiddenSize", 192))
    message = str(raised.value)
    assert message.startswith("TrainingJob/gpt: spec.checkpoint.uri: /runs/gpt/checkpoints holds checkpoints of")
    assert "spec.model.hiddenSize 128 -> 192" in message
    assert "spec.checkpoint.resume: false" in message and f"spec.model.pretrained.uri: {LATEST}" in message
    assert "\n" not in message


def test_other_data_is_refused() -> None:
    state = saved(ckpt.run_identity(SPEC, "old-data-hash"), 100, 300)
    with pytest.raises(SpecError, match=r"the dataset \(old-data -> d\)"):
        decide(state)


def test_a_longer_run_continues_only_when_asked() -> None:
    state = saved(ckpt.run_identity(SPEC, "d"), 300, 300)
    longer = edited("training.maxSteps", 400)
    with pytest.raises(SpecError) as raised:
        decide(state, spec=longer, planned=400)
    assert "spec.training.maxSteps: " in str(raised.value) and "spec.checkpoint.extend: true" in str(raised.value)
    assert decide(state, spec=longer, planned=400, extend=True) == ckpt.ResumeDecision(LATEST, 300, extended_from=300)


def test_a_shorter_run_never_resumes_past_its_planned_steps() -> None:
    state = saved(ckpt.run_identity(SPEC, "d"), 400, 400)  # the run extended to 400, then reverted to 300
    for extend in (False, True):
        with pytest.raises(SpecError, match="at step 400, past the 300 steps this spec plans"):
            decide(state, planned=300, extend=extend)


def test_checkpoints_without_an_identity_are_never_loaded() -> None:
    with pytest.raises(SpecError, match="without a run identity"):
        decide(saved({}, 100, None))


def test_the_driver_resumes_its_own_run_and_refuses_an_edited_one(tmp_path: Path) -> None:
    """prepare_run + choose_resume on a real dataset and a checkpoint as the workers write it (no Ray)."""
    from kubeforge.api import TrainingJob
    from kubeforge_trainer.train.driver import choose_resume, prepare_run
    from kubeforge_trainer.train.synthetic import write_dataset
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(30)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<pad>")).save(str(tmp_path / "tok.json"))
    rows = [[2 + (i + j) % 30 for j in range(9)] for i in range(32)]
    data = write_dataset(
        tmp_path / "data",
        task="languageModeling",
        sequence_length=9,
        tokenizer_file=tmp_path / "tok.json",
        vocab_size=32,
        splits={"train": rows},
        eos_token_id=1,
    )
    root = tmp_path / "ckpt"

    def job(**edits: object) -> TrainingJob:
        spec = {
            "dataRef": {"uri": str(data)},
            "model": {"layers": 1, "heads": 2, "hiddenSize": 8, "contextLength": 8},
            "training": {"maxSteps": 4, "microBatchSize": 2},
            "checkpoint": {"uri": str(root)},
        }
        for path, value in edits.items():
            section, leaf = path.split("_")
            spec[section] = {**spec[section], leaf: value}
        body = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tj"}}
        return TrainingJob.model_validate({**body, "spec": spec})

    def start(resource: TrainingJob):
        settings, resolved = prepare_run(resource, str(data))
        return choose_resume(resource, settings, resolved["plan"].total_steps)

    settings, decision = start(job())
    assert decision == ckpt.ResumeDecision()
    finished = make_checkpoint(root, 4)
    state = ckpt.TrainerState(run_id="r1", step=4, identity=settings.identity, planned_steps=4)
    (finished / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state.to_dict()))

    settings, decision = start(job(checkpoint_intervalSteps=1))  # a field outside the identity
    assert (decision.checkpoint, decision.step, settings.run_id) == (str(finished), 4, "r1")
    with pytest.raises(SpecError, match=r"spec.model.hiddenSize 8 -> 16"):
        start(job(model_hiddenSize=16))
    with pytest.raises(SpecError, match=r"^TrainingJob/tj: spec.training.maxSteps: .*checkpoint.extend: true"):
        start(job(training_maxSteps=6))
    assert start(job(training_maxSteps=6, checkpoint_extend=True))[1].extended_from == 4
    settings, decision = start(job(checkpoint_resume=False))  # removes them and starts afresh
    assert decision == ckpt.ResumeDecision() and ckpt.complete_checkpoints(str(root)) == []
