"""Learning-rate schedules: warmup, constant, linear and cosine decay to the minimum ratio."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch
from kubeforge_trainer.train.schedule import lr_lambda, lr_multiplier


def lr(step: int, schedule: str, warmup: int = 10, total: int = 110, min_ratio: float = 0.1) -> float:
    return lr_multiplier(step, schedule=schedule, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warmup_rises_linearly_from_the_first_step(schedule: str) -> None:
    assert [lr(s, schedule) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr(10, schedule) == pytest.approx(1.0)


def test_constant_stays_at_the_peak() -> None:
    assert {lr(s, "constant") for s in range(10, 500, 37)} == {1.0}


def test_linear_decays_to_the_minimum_ratio_and_stays() -> None:
    assert lr(60, "linear") == pytest.approx(1 - 0.9 * 0.5)
    assert lr(110, "linear") == pytest.approx(0.1)
    assert lr(500, "linear") == pytest.approx(0.1)


def test_cosine_is_half_way_at_the_middle_and_ends_at_the_minimum() -> None:
    assert lr(60, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr(35, "cosine") == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(110, "cosine") == pytest.approx(0.1)
    decay = [lr(s, "cosine") for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr(0, "cosine", warmup=0) == pytest.approx(1.0)


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        lr(0, "step")


def test_lambda_drives_torch_lambdalr_and_survives_state_dict_round_trip() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("linear", 2, 10, 0.0))
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1.0, 2.0, 2.0, 2.0 * (1 - 1 / 8)])
    # A resumed run with a longer plan keeps its own schedule: the state dict only carries the step.
    resumed_opt = torch.optim.SGD([param], lr=2.0)
    resumed = torch.optim.lr_scheduler.LambdaLR(resumed_opt, lr_lambda("linear", 2, 18, 0.0))
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.lr_lambdas[0].keywords["total_steps"] == 18
    assert resumed.last_epoch == 4
    assert pickle.loads(pickle.dumps(lr_lambda("cosine", 1, 5, 0.1)))(5) == pytest.approx(0.1)
