"""The run report: `<state dir>/report/<run>/report.md` with PNG plots.

What it shows: every step and how it ended; per DataPipeline the rows in and out of each operation, the splits and
the leakage check (from the dataset's `_manifest.json`); per TrainingJob the loss and evaluation curves (the
trainer's `<checkpoint.uri>/logs/train.csv` and `eval.csv`), the best validation and the test metrics; per
ModelDeployment the endpoint, the sample completion and the commands to query it.

`render_report` is pure (inputs -> Markdown); the plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .summary import human_count, human_duration, metrics_text

CURVES_DIR = "logs"
TRAIN_CURVE = "train.csv"
EVAL_CURVE = "eval.csv"


@dataclass
class StepSummary:
    """How one resource's step ended, as the report shows it."""

    kind: str
    name: str
    phase: str
    seconds: float | None
    skipped: bool
    message: str
    status: dict[str, Any]


@dataclass
class Curves:
    """A training run's curves: one dict per train.csv row and per eval.csv row (numbers as floats)."""

    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReportInput:
    """Everything the report shows."""

    run_id: str
    paths: Sequence[str]
    started_at: str
    seconds: float
    cpus: int
    steps: list[StepSummary]
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: dict[str, Curves] = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    serving_live: bool = False


def parse_curve_csv(text: str) -> list[dict[str, Any]]:
    """Rows of a curve CSV with numeric cells as floats (step as int) and empty cells left out."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {}
        for key, value in raw.items():
            if key is None or value in (None, ""):
                continue
            try:
                row[key] = int(value) if key == "step" else float(value)
            except ValueError:
                row[key] = value
        if "step" in row:
            rows.append(row)
    return rows


def read_curves(checkpoint_uri: str) -> Curves:
    """The curves a TrainingJob wrote under <checkpoint.uri>/logs (empty when there are none)."""
    from kubeforge_trainer import storage

    def read(name: str) -> list[dict[str, Any]]:
        uri = storage.join(checkpoint_uri, CURVES_DIR, name)
        try:
            return parse_curve_csv(storage.read_text(uri))
        except (FileNotFoundError, OSError):
            return []

    return Curves(read(TRAIN_CURVE), read(EVAL_CURVE))


def eval_series(curves: Curves, split: str, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of one split's evaluations, in step order."""
    points = sorted((r["step"], r[metric]) for r in curves.evals if r.get("split") == split and metric in r)
    return [s for s, _ in points], [v for _, v in points]


def eval_metric_names(curves: Curves) -> list[str]:
    """The metrics the evaluations recorded, in file order."""
    names: list[str] = []
    for row in curves.evals:
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, float) and key not in names:
                names.append(key)
    return names


def plot_training(curves: Curves, title: str, path: Path) -> bool:
    """Loss (train and validation, test as a marker) and the other validation metrics against steps; False if no
    rows."""
    if not curves.train and not curves.evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [m for m in eval_metric_names(curves) if m != "loss"]
    fig, axes = plt.subplots(1, 1 + bool(others), figsize=(11 if others else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    train = [(r["step"], r["loss"]) for r in curves.train if "loss" in r]
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train", color="tab:blue", linewidth=1.2)
    steps, values = eval_series(curves, "validation", "loss")
    if steps:
        ax.plot(steps, values, "o-", label="validation", color="tab:orange")
    steps, values = eval_series(curves, "test", "loss")
    if steps:
        ax.plot(steps, values, "s", label="test", color="tab:red", markersize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if others:
        ax2 = axes[0][1]
        for metric in others:
            steps, values = eval_series(curves, "validation", metric)
            if steps:
                ax2.plot(steps, values, "o-", label=f"validation {metric}")
            test_steps, test_values = eval_series(curves, "test", metric)
            if test_steps:
                ax2.plot(test_steps, test_values, "s", label=f"test {metric}", markersize=8)
        ax2.set_xlabel("step")
        ax2.set_title(f"{title}: evaluation")
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_operations(operations: list[dict[str, Any]], title: str, path: Path) -> bool:
    """Rows kept and dropped by each operation (horizontal bars); False when there are no operations."""
    if not operations:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [op.get("name", "?") for op in operations][::-1]
    kept = [op.get("rowsOut", 0) for op in operations][::-1]
    dropped = [op.get("rowsIn", 0) - op.get("rowsOut", 0) - op.get("rowsErrored", 0) for op in operations][::-1]
    errored = [op.get("rowsErrored", 0) for op in operations][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
    ax.barh(names, kept, color="tab:green", label="kept")
    ax.barh(names, dropped, left=kept, color="tab:gray", label="dropped")
    if any(errored):
        ax.barh(
            names, errored, left=[k + d for k, d in zip(kept, dropped, strict=True)], color="tab:red", label="errored"
        )
    ax.set_xlabel("rows")
    ax.set_title(f"{title}: rows per operation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _dataset_section(name: str, manifest: dict[str, Any], status: dict[str, Any], plot: str | None) -> list[str]:
    lines = [f"## Data: DataPipeline/{name}", ""]
    lines.append(
        f"Output `{status.get('outputUri', '?')}` · task `{manifest.get('task', '?')}` · sequence length "
        f"{manifest.get('sequenceLength', '?')} · vocabulary {manifest.get('vocabSize', '?')} tokens"
    )
    lines.append("")
    operations = manifest.get("operations") or status.get("operations") or []
    if operations:
        rows = []
        for op in operations:
            rows_in, rows_out, errored = op.get("rowsIn", 0), op.get("rowsOut", 0), op.get("rowsErrored", 0)
            dropped = rows_in - rows_out - errored
            rows.append(
                (
                    op.get("name", "?"),
                    f"{rows_in:,}",
                    f"{rows_out:,}",
                    f"{dropped:,}",
                    _percent(dropped, rows_in),
                    f"{errored:,}",
                )
            )
        lines += ["### Rows per operation", ""]
        lines += _table(("operation", "rows in", "rows out", "dropped", "dropped %", "errored"), rows)
        lines.append("")
    if plot:
        lines += [f"![rows per operation]({plot})", ""]
    accounting = manifest.get("accounting") or {}
    if accounting:
        lines.append(
            f"Accounting: {accounting.get('rowsIn', 0):,} documents read, {accounting.get('rowsOut', 0):,} kept, "
            f"{accounting.get('rowsDropped', 0):,} dropped, {accounting.get('rowsErrored', 0):,} errored."
        )
    leakage = manifest.get("leakage") or {}
    if "crossSplitExactDuplicates" in leakage:
        lines.append(f"Exact duplicates across splits (leakage check): {leakage['crossSplitExactDuplicates']:,}.")
    lines.append("")
    splits = manifest.get("splits") or {}
    if splits:
        rows = []
        for split, info in splits.items():
            shards = info.get("shards", [])
            size = sum(s.get("bytes", 0) for s in shards) if isinstance(shards, list) else 0
            count = len(shards) if isinstance(shards, list) else shards
            rows.append(
                (split, f"{info.get('rows', 0):,}", f"{info.get('tokens', 0):,}", count, human_count(size) + "B")
            )
        lines += ["### Splits", ""]
        lines += _table(("split", "rows", "tokens", "shards", "size"), rows)
        lines.append("")
    return lines


def _metrics_table(status: dict[str, Any], curves: Curves) -> list[str]:
    final_train = next((r for r in reversed(curves.train) if "loss" in r), None)
    columns: list[str] = []
    rows: list[tuple[str, dict[str, float]]] = []
    if final_train is not None:
        rows.append((f"train (step {final_train['step']})", {"loss": final_train["loss"]}))
    for label, key in (
        ("validation, latest", "evalMetrics"),
        ("validation, best", "bestMetrics"),
        ("test", "testMetrics"),
    ):
        if status.get(key):
            rows.append((label, status[key]))
    for _, values in rows:
        columns += [k for k in values if k not in columns]
    if not rows:
        return []
    table_rows = [(label, *(_number(values.get(c)) for c in columns)) for label, values in rows]
    return [*_table(("", *columns), table_rows), ""]


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"


def _training_section(name: str, status: dict[str, Any], curves: Curves, plot: str | None) -> list[str]:
    lines = [f"## Training: TrainingJob/{name}", ""]
    steps = f"{status.get('step', '?')}/{status.get('totalSteps', '?')} steps"
    extra = " (stopped early)" if status.get("stoppedEarly") else ""
    speed = f" · {human_count(status['tokensPerSecond'])} tokens/s" if status.get("tokensPerSecond") else ""
    lines += [
        f"{steps}{extra}{speed} · model `{status.get('modelUri', '?')}` version `{status.get('modelVersion', '?')}`",
        "",
    ]
    if plot:
        lines += [f"![loss and evaluation curves]({plot})", ""]
    elif not curves.train:
        lines += ["No loss curve was found under the checkpoint directory.", ""]
    lines += _metrics_table(status, curves)
    if status.get("bestCheckpoint"):
        lines += [f"Best checkpoint: `{status['bestCheckpoint']}`.", ""]
    return lines


def _serving_section(
    name: str, status: dict[str, Any], sample: dict[str, Any] | None, commands: list[str], live: bool
) -> list[str]:
    lines = [f"## Serving: ModelDeployment/{name}", ""]
    url = status.get("url") or (sample or {}).get("url")
    state = "live (`kubeforge run --serve`)" if live else "stopped with the run; `kubeforge run --serve` keeps it up"
    lines += [f"Endpoint `{url}` — {state}; model version `{status.get('modelVersion', '?')}`.", ""]
    if sample:
        what = "Label" if sample["task"] == "classification" else "Completion"
        lines += [f"Prompt: `{sample['prompt']}`", "", f"{what} by the freshly trained model:", "", "```text"]
        lines += [
            sample["prompt"] + sample["answer"] if sample["task"] != "classification" else sample["answer"],
            "```",
            "",
        ]
    if commands:
        lines += ["Query it:", "", "```bash", *commands, "```", ""]
    return lines


def render_report(data: ReportInput, plots: dict[str, str]) -> str:
    """The report as Markdown; plots maps 'data:<name>' / 'train:<name>' to PNG file names next to it."""
    lines = [f"# kubeforge run {data.run_id}", ""]
    lines.append(
        f"`kubeforge run {' '.join(data.paths)}` · started {data.started_at} · {human_duration(data.seconds)} · "
        f"local Ray on {data.cpus} CPU(s)"
    )
    lines += ["", "| # | resource | phase | time | result |", "|---|---|---|---|---|"]
    for i, step in enumerate(data.steps, 1):
        result = step.message if (step.skipped or step.phase not in ("Succeeded", "Ready")) else ""
        result = result or metrics_text(step.kind, step.status)
        took = human_duration(step.seconds) + (" (earlier run)" if step.skipped else "")
        lines.append(f"| {i} | {step.kind}/{step.name} | {step.phase} | {took} | {result.replace('|', '/')} |")
    lines.append("")
    by_kind = {(s.kind, s.name): s for s in data.steps}
    for (kind, name), step in by_kind.items():
        if kind == "DataPipeline" and name in data.datasets:
            lines += _dataset_section(name, data.datasets[name], step.status, plots.get(f"data:{name}"))
        elif kind == "TrainingJob":
            lines += _training_section(name, step.status, data.curves.get(name, Curves()), plots.get(f"train:{name}"))
        elif kind == "ModelDeployment":
            sample = data.samples.get(name)
            lines += _serving_section(name, step.status, sample, data.commands.get(name, []), data.serving_live)
    return "\n".join(lines).rstrip() + "\n"


def write_report(directory: Path, data: ReportInput) -> Path:
    """Write report.md and its plots into directory; returns the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    for name, manifest in data.datasets.items():
        file = f"data-{name}.png"
        if plot_operations(manifest.get("operations") or [], f"DataPipeline/{name}", directory / file):
            plots[f"data:{name}"] = file
    for name, curves in data.curves.items():
        file = f"training-{name}.png"
        if plot_training(curves, f"TrainingJob/{name}", directory / file):
            plots[f"train:{name}"] = file
    path = directory / "report.md"
    path.write_text(render_report(data, plots))
    return path
