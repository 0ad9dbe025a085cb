"""Readable numbers and the per-kind one-line summaries behind `kubeforge status`, the phase lines and the report."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from kubeforge.local.summary import (
    STATUS_COLUMNS,
    format_metric,
    format_table,
    human_count,
    human_duration,
    metrics_text,
    progress_text,
    seconds_between,
    status_rows,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "0"), (999, "999"), (1234, "1.2k"), (3_400_000, "3.4M"), (2.5, "2.5"), (7e9, "7.0G")],
)
def test_human_count(value, text):
    assert human_count(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (4.4, "4s"), (75, "1m15s"), (3700, "1h01m"), (90000, "1d1h"), (-3, "0s")]
)
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def test_format_metric():
    assert format_metric("loss", 3.21456) == "loss 3.215"
    assert format_metric("loss", 3.0) == "loss 3"
    assert format_metric("perplexity", 1234.5) == "perplexity 1,234"
    assert format_metric("lr", 0.0003) == "lr 0.0003"


def test_seconds_between():
    assert seconds_between("2025-01-01T00:00:00Z", "2025-01-01T00:01:30Z") == 90
    assert seconds_between(None, "2025-01-01T00:01:30Z") is None
    assert seconds_between("garbage", "2025-01-01T00:01:30Z") is None


def test_metrics_text_per_kind():
    dp = {"rowsIn": 6000, "rowsOut": 4200, "tokens": 1_200_000, "shards": 3}
    assert metrics_text("DataPipeline", dp) == "rows 6.0k -> 4.2k · tokens 1.2M · shards 3"
    tj = {"loss": 3.2, "evalMetrics": {"loss": 3.4}, "tokensPerSecond": 2500}
    assert metrics_text("TrainingJob", tj) == "loss 3.2 · eval loss 3.4 · 2.5k tok/s"
    tj["testMetrics"] = {"loss": 3.5, "perplexity": 33.1}
    assert "test loss 3.5 · test perplexity 33.1" in metrics_text("TrainingJob", tj)
    assert "eval loss" not in metrics_text("TrainingJob", tj)
    md = {"url": "http://127.0.0.1:8000", "modelVersion": "v1"}
    assert metrics_text("ModelDeployment", md) == "http://127.0.0.1:8000 · version v1"
    assert metrics_text("TrainingJob", {}) == "-"


def test_progress_text():
    assert progress_text("TrainingJob", {"step": 40, "totalSteps": 300, "progress": "x"}) == "40/300"
    assert progress_text("DataPipeline", {"progress": "nearDedup 3/7"}) == "nearDedup 3/7"
    assert progress_text("ModelDeployment", {"replicas": 2, "readyReplicas": 1}) == "1/2 replicas"
    assert progress_text("DataPipeline", {}) == "-"


def test_status_rows_and_table():
    now = datetime(2025, 1, 1, 0, 10, tzinfo=timezone.utc)
    entries = [
        (
            "DataPipeline",
            "corpus",
            {"phase": "Succeeded", "rowsIn": 10, "rowsOut": 8, "completionTime": "2025-01-01T00:05:00Z"},
        ),
        (
            "TrainingJob",
            "gpt",
            {"phase": "Running", "step": 3, "totalSteps": 9, "lastProgressTime": "2025-01-01T00:09:50Z"},
        ),
        ("ModelDeployment", "gpt", {}),
    ]
    rows = status_rows(entries, now)
    assert rows[0] == ("DataPipeline", "corpus", "Succeeded", "-", "rows 10 -> 8", "5m00s")
    assert rows[1][2:4] == ("Running", "3/9")
    assert rows[1][5] == "10s"
    assert rows[2][2] == "Unknown"
    table = format_table(STATUS_COLUMNS, rows).splitlines()
    assert table[0].split() == list(STATUS_COLUMNS)
    assert table[1].startswith("DataPipeline      corpus")
    phase_column = table[0].index("PHASE")
    assert all(line[phase_column:].split()[0] in ("PHASE", "Succeeded", "Running", "Unknown") for line in table)
