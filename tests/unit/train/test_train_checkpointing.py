"""Checkpoint names, the retention policy, finding the checkpoint to resume from, and the trainer state."""

from __future__ import annotations

from pathlib import Path

import pytest
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
