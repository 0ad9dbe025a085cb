"""The progress display of `kubeforge run`: phase lines, and progress bars fed from the status files.

One mechanism: the workloads report through FileStatusReporter into `<state dir>/status/<Kind>/<name>.json` (from
the driver or from any Ray worker process), a watcher thread polls that file, `bars_for` turns the status into bars
(pure), and a renderer draws them — rich bars on a terminal, plain throttled lines otherwise (CI logs).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from kubeforge_trainer.progress import read_status_file

from .summary import format_metrics, human_count

Status = dict[str, Any]

_PROGRESS_TEXT_RE = re.compile(r"^\s*(?P<label>[A-Za-z][\w .-]*?)?\s*(?P<done>\d+)\s*/\s*(?P<total>\d+)\b")


@dataclass(frozen=True)
class Bar:
    """One progress bar: completed out of total (None: unknown) and a short text after it."""

    key: str
    description: str
    completed: float | None
    total: float | None
    info: str = ""

    @property
    def finished(self) -> bool:
        """Whether the bar is full."""
        return self.total is not None and self.completed is not None and self.completed >= self.total


def bar_from_progress_text(text: str | None, default_label: str) -> Bar | None:
    """A bar from a workload's progress text such as 'nearDedup 3/7', 'eval 5/20' or '120/1000'; None otherwise."""
    match = _PROGRESS_TEXT_RE.match(text or "")
    if not match:
        return None
    label = (match.group("label") or default_label).strip()
    return Bar(f"text:{label}", label, int(match.group("done")), int(match.group("total")), "")


def _datapipeline_bars(status: Status) -> list[Bar]:
    """One bar per operation: waiting, running (its tasks, from the progress text 'nearDedup 3/8'), or done
    (rows in, with kept and dropped); then a bar for the later stages (split, tokenize, write) and the splits."""
    bars: list[Bar] = []
    current = bar_from_progress_text(status.get("progress"), "")
    operations = status.get("operations") or []
    names = {op.get("name") for op in operations}
    for i, op in enumerate(operations):
        name = op.get("name", "?")
        rows_in, rows_out = op.get("rowsIn", 0), op.get("rowsOut", 0)
        errored = op.get("rowsErrored", 0)
        key = f"op:{i}:{name}"
        if rows_in or rows_out:
            info = f"kept {human_count(rows_out)}, dropped {human_count(rows_in - rows_out - errored)}"
            if errored:
                info += f", errored {human_count(errored)}"
            bars.append(Bar(key, name, rows_in, rows_in, info))
        elif current is not None and current.description == name:
            bars.append(Bar(key, name, current.completed, current.total, "tasks"))
        else:
            bars.append(Bar(key, name, 0, None, ""))
    progress = status.get("progress") or ""
    stage = (current.description if current else progress.split(" ")[0]) if progress else ""
    if stage and stage not in names and not status.get("splits"):
        count = (current.completed, current.total) if current else (None, None)
        bars.append(Bar("stage", "prepare", *count, progress))
    splits = status.get("splits") or {}
    if splits:
        info = " · ".join(f"{name} {human_count(s.get('tokens'))} tok" for name, s in splits.items())
        rows = sum(s.get("rows", 0) for s in splits.values())
        bars.append(Bar("write", "write", rows, rows, info))
    return bars


def _trainingjob_bars(status: Status) -> list[Bar]:
    bars: list[Bar] = []
    if status.get("step") is not None or status.get("totalSteps") is not None:
        parts = []
        if status.get("loss") is not None:
            parts.append(f"loss {status['loss']:.3f}")
        if status.get("tokensPerSecond"):
            parts.append(f"{human_count(status['tokensPerSecond'])} tok/s")
        if status.get("learningRate") is not None:
            parts.append(f"lr {status['learningRate']:.2e}")
        bars.append(Bar("train", "train", status.get("step") or 0, status.get("totalSteps"), " · ".join(parts)))
    evals = status.get("evalMetrics") or {}
    if evals:
        best = format_metrics(status.get("bestMetrics"), "best ")
        bars.append(Bar("eval", "evaluate", None, None, " · ".join(p for p in (format_metrics(evals), best) if p)))
    tests = status.get("testMetrics") or {}
    if tests:
        bars.append(Bar("test", "test", None, None, format_metrics(tests)))
    return bars


def _modeldeployment_bars(status: Status) -> list[Bar]:
    replicas = status.get("replicas")
    ready = status.get("readyReplicas") or 0
    info = status.get("url") or status.get("message") or ""
    return [Bar("deploy", "replicas", ready, replicas, info)]


_BARS: dict[str, Callable[[Status], list[Bar]]] = {
    "DataPipeline": _datapipeline_bars,
    "TrainingJob": _trainingjob_bars,
    "ModelDeployment": _modeldeployment_bars,
}


def bars_for(kind: str, status: Status) -> list[Bar]:
    """The bars that show a status of this kind."""
    return _BARS[kind](status)


def is_waiting(bar: Bar) -> bool:
    """A bar with nothing to show yet (an operation not started): renderers leave it out until it starts."""
    return not bar.completed and bar.total is None and not bar.info


def count_text(bar: Bar) -> str:
    """'1.2k/3.0k', '1.2k' without a total, '' for an info-only bar."""
    if bar.completed is None:
        return ""
    if bar.total is None:
        return human_count(bar.completed)
    return f"{human_count(bar.completed)}/{human_count(bar.total)}"


class Renderer(Protocol):
    """Draws phase lines and bars."""

    def line(self, text: str, style: str = "") -> None:
        """Print one line above the bars."""

    def start(self) -> None:
        """Begin showing bars for a new step."""

    def update(self, bars: list[Bar]) -> None:
        """Show these bars (keys identify them across updates)."""

    def stop(self) -> None:
        """Leave the step's bars as they are and stop redrawing."""


class PlainRenderer:
    """Plain lines for logs: a bar's line is printed when it appears, finishes, or at most every interval seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 15.0) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self._printed: dict[str, tuple[float, Bar]] = {}
        self._unprinted: dict[str, Bar] = {}
        self._current: set[str] = set()

    def line(self, text: str, style: str = "") -> None:
        """Print one line."""
        print(text, file=self.stream, flush=True)

    def start(self) -> None:
        """Forget the previous step's bars."""
        self._printed, self._unprinted, self._current = {}, {}, set()

    def update(self, bars: list[Bar]) -> None:
        """Print the bars that changed and are due; remember the others for stop()."""
        now = time.monotonic()
        self._current = {bar.key for bar in bars}
        for bar in bars:
            if is_waiting(bar):
                continue
            previous = self._printed.get(bar.key)
            if previous is not None and previous[1] == bar:
                continue
            newly_finished = bar.finished and (previous is None or not previous[1].finished)
            if previous is None or newly_finished or now - previous[0] >= self.interval:
                self._print(bar, now)
            else:
                self._unprinted[bar.key] = bar

    def _print(self, bar: Bar, now: float) -> None:
        self.line(f"    {plain_bar_text(bar)}")
        self._printed[bar.key] = (now, bar)
        self._unprinted.pop(bar.key, None)

    def stop(self) -> None:
        """Print the final state of every bar still shown whose last change was not printed."""
        now = time.monotonic()
        for bar in list(self._unprinted.values()):
            if bar.key in self._current:
                self._print(bar, now)


def plain_bar_text(bar: Bar) -> str:
    """'train 120/300 (40%) loss 3.210 · 1.2k tok/s'."""
    if bar.completed is None:
        count = ""
    elif bar.total:
        count = f" {human_count(bar.completed)}/{human_count(bar.total)} ({100 * bar.completed / bar.total:.0f}%)"
    else:
        count = f" {human_count(bar.completed)}"
    return f"{bar.description}{count}{'  ' + bar.info if bar.info else ''}"


class RichRenderer:
    """Progress bars on a terminal with rich; lines printed while bars are live go above them."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def line(self, text: str, style: str = "") -> None:
        """Print one line (markup off: manifest names may contain brackets)."""
        self.console.print(text, style=style or None, markup=False, highlight=False)

    def start(self) -> None:
        """Open a new set of bars below the phase line."""
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description:<18}", markup=False),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[count]:>11}", markup=False),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=self.console,
            refresh_per_second=4,
        )
        self._tasks = {}
        self._progress.start()

    def update(self, bars: list[Bar]) -> None:
        """Create or move the bars."""
        if self._progress is None:
            return
        for bar in bars:
            if is_waiting(bar):
                continue
            # An info-only bar (evaluation metrics) is drawn full: it reports something that happened.
            completed, total = (1, 1) if bar.completed is None else (bar.completed, bar.total)
            fields = {"info": bar.info, "count": count_text(bar)}
            task = self._tasks.get(bar.key)
            if task is None:
                task = self._tasks[bar.key] = self._progress.add_task(bar.description, total=total, **fields)
            # total=None leaves the total as it was: a bar never goes back to "unknown". (Only update marks a
            # task finished, so a bar that is complete when it first appears goes through it too.)
            self._progress.update(task, total=total, completed=completed, **fields)

    def stop(self) -> None:
        """Stop redrawing; the final bars stay on screen."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def make_renderer(stream: TextIO | None = None, force_plain: bool = False) -> Renderer:
    """Rich bars when stream is a terminal, plain lines otherwise (or when asked)."""
    stream = stream or sys.stdout
    if force_plain or not stream.isatty():
        return PlainRenderer(stream)
    return RichRenderer()


class StatusWatcher:
    """Polls one status file and hands each new version's bars to a renderer."""

    def __init__(self, kind: str, path: Path, renderer: Renderer, interval: float = 0.25) -> None:
        self.kind, self.path, self.renderer, self.interval = kind, path, renderer, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kubeforge-watch-{kind}", daemon=True)
        self._last: Status | None = None

    def poll(self) -> Status:
        """Read the status now and redraw when it changed; returns it."""
        status = read_status_file(self.path)
        if status != self._last:
            self._last = status
            self.renderer.update(bars_for(self.kind, status))
        return status

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # a half-written or odd file must not kill the display; the next poll retries
                continue

    def start(self) -> None:
        """Start polling in the background."""
        self._thread.start()

    def stop(self) -> Status:
        """Stop polling, draw the final state, return it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        return self.poll()


@contextmanager
def watching(kind: str, path: Path, renderer: Renderer) -> Iterator[StatusWatcher]:
    """Show bars for the status file at path while the block runs."""
    renderer.start()
    watcher = StatusWatcher(kind, path, renderer)
    watcher.start()
    try:
        yield watcher
    finally:
        try:
            watcher.stop()
        finally:
            renderer.stop()
