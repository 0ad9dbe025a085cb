"""Progress bars from status files: which bars a status shows, plain-line throttling, and the watcher thread."""

from __future__ import annotations

import io
import time

from kubeforge.local.display import (
    Bar,
    PlainRenderer,
    StatusWatcher,
    bar_from_progress_text,
    bars_for,
    make_renderer,
    plain_bar_text,
    watching,
)
from kubeforge_trainer.progress import FileStatusReporter


class Recorder:
    """A renderer that keeps what it was given."""

    def __init__(self) -> None:
        self.updates: list[list[Bar]] = []
        self.lines: list[str] = []
        self.started = self.stopped = 0

    def line(self, text: str, style: str = "") -> None:
        self.lines.append(text)

    def start(self) -> None:
        self.started += 1

    def update(self, bars: list[Bar]) -> None:
        self.updates.append(bars)

    def stop(self) -> None:
        self.stopped += 1


def by_key(bars: list[Bar]) -> dict[str, Bar]:
    return {b.key: b for b in bars}


def test_progress_text_becomes_a_bar():
    assert bar_from_progress_text("nearDedup 3/7", "x") == Bar("text:nearDedup", "nearDedup", 3, 7, "")
    assert bar_from_progress_text("120/1000 (12%)", "progress").description == "progress"
    assert bar_from_progress_text("tokenizing", "x") is None
    assert bar_from_progress_text(None, "x") is None


def test_datapipeline_bars_show_each_operation_waiting_running_and_done():
    operations = [
        {"name": "read", "rowsIn": 100, "rowsOut": 100, "rowsErrored": 0},
        {"name": "dropEmpty", "rowsIn": 100, "rowsOut": 90, "rowsErrored": 0},
        {"name": "exactDedup", "rowsIn": 0, "rowsOut": 0, "rowsErrored": 0},
        {"name": "nearDedup", "rowsIn": 0, "rowsOut": 0, "rowsErrored": 0},
    ]
    bars = by_key(bars_for("DataPipeline", {"operations": operations, "progress": "exactDedup 3/8"}))
    assert list(bars) == ["op:0:read", "op:1:dropEmpty", "op:2:exactDedup", "op:3:nearDedup"]
    assert bars["op:1:dropEmpty"] == Bar("op:1:dropEmpty", "dropEmpty", 100, 100, "kept 90, dropped 10")
    assert bars["op:1:dropEmpty"].finished
    assert (bars["op:2:exactDedup"].completed, bars["op:2:exactDedup"].total) == (3, 8), "running: its tasks"
    assert (bars["op:3:nearDedup"].completed, bars["op:3:nearDedup"].total) == (0, None), "waiting"

    operations[2] = {"name": "exactDedup", "rowsIn": 90, "rowsOut": 70, "rowsErrored": 2}
    bars = by_key(bars_for("DataPipeline", {"operations": operations, "progress": "write 1/3"}))
    assert bars["op:2:exactDedup"].info == "kept 70, dropped 18, errored 2"
    assert bars["stage"] == Bar("stage", "prepare", 1, 3, "write 1/3")
    assert (bars["stage"].completed, bars["stage"].total) == (1, 3)
    assert by_key(bars_for("DataPipeline", {"progress": "tokenize"}))["stage"].info == "tokenize"

    done = {
        "operations": operations,
        "progress": "commit",
        "splits": {"train": {"rows": 60, "tokens": 6000}, "test": {"rows": 10, "tokens": 1000}},
    }
    bars = by_key(bars_for("DataPipeline", done))
    assert "stage" not in bars
    assert bars["write"] == Bar("write", "write", 70, 70, "train 6.0k tok · test 1.0k tok")


def test_trainingjob_bars_show_steps_loss_throughput_and_evaluation():
    status = {
        "step": 40,
        "totalSteps": 300,
        "loss": 3.21,
        "tokensPerSecond": 2500.0,
        "learningRate": 0.002,
        "progress": "40/300 (13%)",
        "evalMetrics": {"loss": 3.4, "perplexity": 30.0},
        "bestMetrics": {"loss": 3.4},
    }
    bars = by_key(bars_for("TrainingJob", status))
    train = bars["train"]
    assert (train.completed, train.total) == (40, 300)
    assert train.info == "loss 3.210 · 2.5k tok/s · lr 2.00e-03"
    assert bars["eval"].info == "loss 3.4 · perplexity 30 · best loss 3.4"
    assert list(bars) == ["train", "eval"]
    assert "test" not in bars
    assert by_key(bars_for("TrainingJob", {**status, "testMetrics": {"loss": 3.5}}))["test"].info == "loss 3.5"
    assert bars_for("TrainingJob", {}) == []


def test_deployment_bar_counts_ready_replicas():
    bar = bars_for("ModelDeployment", {"replicas": 2, "readyReplicas": 1, "url": "http://x"})[0]
    assert (bar.completed, bar.total, bar.info) == (1, 2, "http://x")


def test_plain_renderer_prints_new_finished_and_due_bars_only():
    out = io.StringIO()
    renderer = PlainRenderer(out, interval=3600)
    renderer.start()
    renderer.update([Bar("train", "train", 1, 10, "loss 5")])
    renderer.update([Bar("train", "train", 2, 10, "loss 4")])  # not due: held back
    renderer.update([Bar("train", "train", 2, 10, "loss 4")])  # unchanged
    renderer.update([Bar("train", "train", 10, 10, "loss 3")])  # finished: printed at once
    renderer.update([Bar("eval", "evaluate", None, None, "loss 3.1")])
    renderer.update([Bar("eval", "evaluate", None, None, "loss 3.0")])  # held back until stop
    renderer.update([Bar("eval", "evaluate", None, None, "loss 3.0"), Bar("nearDedup", "nearDedup", 0, None, "")])
    renderer.stop()
    assert out.getvalue().splitlines() == [
        "    train 1/10 (10%)  loss 5",
        "    train 10/10 (100%)  loss 3",
        "    evaluate  loss 3.1",
        "    evaluate  loss 3.0",
    ]


def test_plain_renderer_forgets_bars_that_went_away():
    out = io.StringIO()
    renderer = PlainRenderer(out, interval=3600)
    renderer.update([Bar("stage", "prepare", 1, 8, "tokenize 1/8")])
    renderer.update([Bar("stage", "prepare", 6, 8, "tokenize 6/8")])  # held back
    renderer.update([Bar("write", "write", 5, 5, "")])  # the stage bar is gone
    renderer.stop()
    assert out.getvalue().splitlines() == ["    prepare 1/8 (12%)  tokenize 1/8", "    write 5/5 (100%)"]


def test_plain_renderer_prints_again_once_the_interval_passed():
    out = io.StringIO()
    renderer = PlainRenderer(out, interval=0)
    renderer.update([Bar("train", "train", 1, 10, "")])
    renderer.update([Bar("train", "train", 2, 10, "")])
    assert len(out.getvalue().splitlines()) == 2


def test_plain_bar_text_without_total():
    assert plain_bar_text(Bar("read", "read", 1500, None, "1.5k documents")) == "read 1.5k  1.5k documents"


def test_non_terminal_output_gets_plain_lines():
    assert isinstance(make_renderer(io.StringIO()), PlainRenderer)


def test_watcher_follows_a_reporter_writing_the_status_file(tmp_path):
    recorder = Recorder()
    reporter = FileStatusReporter("TrainingJob", "gpt", tmp_path, interval=0)
    path = tmp_path / "TrainingJob" / "gpt.json"
    with watching("TrainingJob", path, recorder) as watcher:
        assert isinstance(watcher, StatusWatcher)
        reporter.report(step=1, totalSteps=4, loss=4.0)
        deadline = time.monotonic() + 10
        while not any(b.key == "train" and b.completed == 1 for u in recorder.updates for b in u):
            assert time.monotonic() < deadline, "the watcher never saw step 1"
            time.sleep(0.05)
        reporter.report(step=4, totalSteps=4, loss=2.0)
    # The final state is drawn when the block ends, even if the last write came between two polls.
    assert by_key(recorder.updates[-1])["train"].completed == 4
    assert (recorder.started, recorder.stopped) == (1, 1)


def test_watcher_survives_a_missing_file(tmp_path):
    recorder = Recorder()
    watcher = StatusWatcher("DataPipeline", tmp_path / "none.json", recorder)
    assert watcher.poll() == {}
    assert recorder.updates == [[]]
    watcher.poll()
    assert len(recorder.updates) == 1, "an unchanged status is not redrawn"


def test_rich_renderer_draws_bars_and_marks_complete_ones_finished():
    from kubeforge.local.display import RichRenderer
    from rich.console import Console

    out = io.StringIO()
    renderer = RichRenderer(Console(file=out, force_terminal=True, width=120))
    renderer.start()
    renderer.update(
        [
            Bar("train", "train", 10, 40, "loss 5.000"),
            Bar("eval", "evaluate", None, None, "loss 5.6"),
            Bar("op:3:nearDedup", "nearDedup", 0, None, ""),
        ]
    )
    tasks = {t.description: t for t in renderer._progress.tasks}
    assert set(tasks) == {"train", "evaluate"}, "a waiting operation gets no bar yet"
    assert (tasks["train"].completed, tasks["train"].total, tasks["train"].finished) == (10, 40, False)
    assert tasks["train"].fields["count"] == "10/40"
    assert tasks["evaluate"].finished and tasks["evaluate"].fields["count"] == ""
    renderer.update([Bar("train", "train", 40, 40, "loss 4.000")])
    assert tasks["train"].finished
    renderer.stop()
    renderer.line("[3/3] ModelDeployment/x")
    assert "loss 4.000" in out.getvalue() and "[3/3] ModelDeployment/x" in out.getvalue()
