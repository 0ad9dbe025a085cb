"""Evaluation metrics on known answers, the improvement test, early stopping and best-checkpoint tracking."""

from __future__ import annotations

import math

import pytest
from kubeforge_trainer.train.evaluation import (
    BestTracker,
    EarlyStoppingState,
    classification_metrics,
    is_improvement,
    language_model_metrics,
    update_early_stopping,
)

ALL = ["loss", "perplexity", "accuracy", "precision", "recall", "f1"]


def test_language_model_loss_is_token_weighted_and_perplexity_its_exp() -> None:
    metrics = language_model_metrics(loss_sum=200.0, token_count=100, wanted=ALL)
    assert metrics == {"loss": 2.0, "perplexity": pytest.approx(math.exp(2.0))}
    assert language_model_metrics(1.0, 0, ALL) == {}
    assert language_model_metrics(1e6, 1, ["perplexity"])["perplexity"] == pytest.approx(math.exp(700))


def test_binary_classification_known_answer() -> None:
    # truth 0: 5 right, 1 called 1; truth 1: 2 called 0, 2 right  -> 10 examples
    confusion = [[5, 1], [2, 2]]
    metrics = classification_metrics(confusion, loss_sum=5.0, wanted=ALL)
    p0, r0 = 5 / 7, 5 / 6
    p1, r1 = 2 / 3, 2 / 4
    f0, f1 = 2 * p0 * r0 / (p0 + r0), 2 * p1 * r1 / (p1 + r1)
    assert metrics == pytest.approx(
        {"loss": 0.5, "accuracy": 0.7, "precision": (p0 + p1) / 2, "recall": (r0 + r1) / 2, "f1": (f0 + f1) / 2}
    )


def test_a_class_never_predicted_scores_zero_and_absent_classes_are_left_out() -> None:
    # three labels, class 2 never occurs; class 1 occurs but is never predicted
    confusion = [[3, 0, 0], [1, 0, 0], [0, 0, 0]]
    metrics = classification_metrics(confusion, 0.0, ["accuracy", "precision", "recall", "f1"])
    assert metrics["accuracy"] == 0.75
    assert metrics["precision"] == pytest.approx((3 / 4 + 0) / 2)
    assert metrics["recall"] == pytest.approx((1 + 0) / 2)
    assert metrics["f1"] == pytest.approx((2 * 0.75 / 1.75 + 0) / 2)


def test_perfect_classifier_scores_one_everywhere() -> None:
    metrics = classification_metrics([[4, 0, 0], [0, 3, 0], [0, 0, 5]], 0.0, ALL)
    assert metrics == {"loss": 0.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert classification_metrics([[0, 0], [0, 0]], 0.0, ALL) == {}


def test_only_wanted_metrics_come_back() -> None:
    assert set(classification_metrics([[1, 0], [0, 1]], 0.0, ["f1"])) == {"f1"}


@pytest.mark.parametrize(
    ("value", "best", "mode", "delta", "expected"),
    [
        (1.0, None, "min", 0.0, True),
        (float("nan"), None, "min", 0.0, False),
        (0.9, 1.0, "min", 0.0, True),
        (0.95, 1.0, "min", 0.1, False),
        (0.89, 1.0, "min", 0.1, True),
        (1.0, 1.0, "min", 0.0, False),
        (1.2, 1.0, "max", 0.1, True),
        (1.05, 1.0, "max", 0.1, False),
    ],
)
def test_is_improvement(value: float, best: float | None, mode: str, delta: float, expected: bool) -> None:
    assert is_improvement(value, best, mode, delta) is expected


def run_early_stopping(values: list[float], **kw: float | str | int) -> list[EarlyStoppingState]:
    state, seen = EarlyStoppingState(), []
    for value in values:
        state = update_early_stopping(state, value, **kw)  # type: ignore[arg-type]
        seen.append(state)
    return seen


def test_early_stopping_waits_patience_evaluations_without_improvement() -> None:
    states = run_early_stopping([3.0, 2.0, 2.5, 2.1, 1.9, 2.0, 2.0, 2.0], mode="min", patience=3, min_delta=0.0)
    assert [s.should_stop for s in states] == [False] * 7 + [True]
    assert [s.evals_without_improvement for s in states] == [0, 0, 1, 2, 0, 1, 2, 3]
    assert states[-1].best == 1.9


def test_early_stopping_min_delta_ignores_small_gains_and_max_mode() -> None:
    states = run_early_stopping([0.5, 0.55, 0.58], mode="max", patience=2, min_delta=0.1)
    assert states[-1].should_stop and states[-1].best == 0.5
    states = run_early_stopping([0.5, 0.7, 0.75], mode="max", patience=2, min_delta=0.1)
    assert not states[-1].should_stop and states[-1].best == 0.7


def test_best_tracker_keeps_the_best_step_and_its_metrics() -> None:
    tracker = BestTracker(metric="f1", mode="max")
    tracker, new = tracker.offer(10, {"f1": 0.5, "loss": 1.0})
    assert new and tracker.step == 10
    tracker, new = tracker.offer(20, {"f1": 0.4, "loss": 0.9})
    assert not new and tracker.step == 10
    tracker, new = tracker.offer(30, {"f1": 0.8, "loss": 1.1})
    assert new and (tracker.step, tracker.value, tracker.metrics) == (30, 0.8, {"f1": 0.8, "loss": 1.1})
    unchanged, new = tracker.offer(40, {"loss": 0.1})  # metric missing: no decision
    assert not new and unchanged is tracker
