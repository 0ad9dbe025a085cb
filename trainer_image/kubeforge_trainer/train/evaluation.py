"""Pure evaluation logic: metrics from summed counts, improvement tests, early stopping and best tracking.

Workers sum loss, token counts and a confusion matrix over their shard; the sums are all-reduced, and these
functions turn the global sums into metrics, so every worker reaches the same numbers and the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

# Perplexity is exp(loss); above this loss it would overflow a float, so it is capped (exp(700) ~ 1e304).
_MAX_LOG_PERPLEXITY = 700.0


def language_model_metrics(loss_sum: float, token_count: int, wanted: Sequence[str]) -> dict[str, float]:
    """loss (mean token cross-entropy, nats) and perplexity from summed loss over token_count tokens."""
    if token_count <= 0:
        return {}
    loss = loss_sum / token_count
    values = {"loss": loss, "perplexity": math.exp(min(loss, _MAX_LOG_PERPLEXITY))}
    return {name: values[name] for name in wanted if name in values}


def classification_metrics(
    confusion: Sequence[Sequence[float]], loss_sum: float, wanted: Sequence[str]
) -> dict[str, float]:
    """loss, accuracy and macro-averaged precision, recall and F1 from a confusion matrix (rows true, cols predicted).

    Classes that never occur, neither as truth nor as prediction, are left out of the macro average; a class with
    no predictions has precision 0 and one with no true examples recall 0 (scikit-learn's zero_division=0).
    """
    n = len(confusion)
    total = sum(sum(row) for row in confusion)
    if total <= 0:
        return {}
    true_counts = [sum(confusion[i]) for i in range(n)]
    pred_counts = [sum(confusion[r][i] for r in range(n)) for i in range(n)]
    present = [i for i in range(n) if true_counts[i] or pred_counts[i]]
    precisions, recalls, f1s = [], [], []
    for i in present:
        tp = confusion[i][i]
        p = tp / pred_counts[i] if pred_counts[i] else 0.0
        r = tp / true_counts[i] if true_counts[i] else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    values = {
        "loss": loss_sum / total,
        "accuracy": sum(confusion[i][i] for i in range(n)) / total,
        "precision": sum(precisions) / len(present),
        "recall": sum(recalls) / len(present),
        "f1": sum(f1s) / len(present),
    }
    return {name: values[name] for name in wanted if name in values}


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether value beats best by more than min_delta in the given mode (min or max); anything beats None."""
    if best is None:
        return not math.isnan(value)
    if mode == "min":
        return value < best - min_delta
    if mode == "max":
        return value > best + min_delta
    raise ValueError(f"unknown mode {mode!r}")


@dataclass(frozen=True)
class EarlyStoppingState:
    """Where early stopping stands: best value seen, evaluations since it improved, and whether to stop."""

    best: float | None = None
    evals_without_improvement: int = 0
    should_stop: bool = False


def update_early_stopping(
    state: EarlyStoppingState, value: float, *, mode: str, patience: int, min_delta: float
) -> EarlyStoppingState:
    """The state after one more evaluation: reset on an improvement larger than min_delta, else count towards
    patience and stop once patience evaluations in a row brought none."""
    if is_improvement(value, state.best, mode, min_delta):
        return EarlyStoppingState(best=value, evals_without_improvement=0, should_stop=False)
    waited = state.evals_without_improvement + 1
    return replace(state, evals_without_improvement=waited, should_stop=waited >= patience)


@dataclass(frozen=True)
class BestTracker:
    """The best evaluation so far (by one metric) and the step it was made at."""

    metric: str
    mode: str
    value: float | None = None
    step: int | None = None
    metrics: dict[str, float] | None = None

    def offer(self, step: int, metrics: dict[str, float]) -> tuple[BestTracker, bool]:
        """(tracker after this evaluation, whether it is the new best)."""
        value = metrics.get(self.metric)
        if value is None or not is_improvement(value, self.value, self.mode):
            return self, False
        return replace(self, value=value, step=step, metrics=dict(metrics)), True
