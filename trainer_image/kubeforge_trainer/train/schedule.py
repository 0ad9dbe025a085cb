"""Learning-rate schedules as pure functions of the optimizer step: linear warmup, then constant, linear or cosine."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable


def lr_multiplier(
    step: int,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
) -> float:
    """Share of the peak learning rate used by the update that follows `step` completed optimizer steps.

    Warmup rises linearly to the peak over warmup_steps (the first update already gets peak/warmup_steps, never 0);
    then constant stays at the peak, and linear and cosine decay to min_ratio x peak at total_steps and stay there.
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """lr_multiplier bound to one schedule, for torch's LambdaLR.

    A functools.partial: picklable, and LambdaLR saves only its (empty) __dict__, so a resumed run keeps the schedule
    of its current spec (e.g. a raised maxSteps) instead of the one stored in the checkpoint.
    """
    return functools.partial(
        lr_multiplier, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio
    )
