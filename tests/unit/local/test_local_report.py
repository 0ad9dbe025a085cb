"""The run report: curve parsing, Markdown content from manifests, statuses and curves, and real PNG plots."""

from __future__ import annotations

from kubeforge.local.report import (
    Curves,
    ReportInput,
    StepSummary,
    eval_metric_names,
    eval_series,
    parse_curve_csv,
    read_curves,
    render_report,
    write_report,
)

TRAIN_CSV = (
    "step,epoch,loss,learning_rate,tokens_per_second,mfu,elapsed_seconds\n"
    "10,0.1,5.0,0.001,900,,3\n"
    "20,0.2,4.0,0.002,950,,6\n"
)
EVAL_CSV = "step,split,loss,perplexity\n10,validation,5.1,164.0\n20,validation,4.2,66.7\n20,test,4.3,73.7\n"
MANIFEST = {
    "task": "languageModeling",
    "sequenceLength": 64,
    "vocabSize": 512,
    "operations": [
        {"name": "dropEmpty", "rowsIn": 100, "rowsOut": 95, "rowsErrored": 0},
        {"name": "exactDedup", "rowsIn": 95, "rowsOut": 80, "rowsErrored": 0},
        {"name": "nearDedup", "rowsIn": 80, "rowsOut": 72, "rowsErrored": 1},
    ],
    "accounting": {"rowsIn": 100, "rowsOut": 72, "rowsDropped": 27, "rowsErrored": 1},
    "leakage": {"crossSplitExactDuplicates": 0},
    "splits": {
        "train": {
            "rows": 60,
            "tokens": 3840,
            "shards": [{"path": "train/part-00000.parquet", "rows": 60, "bytes": 2048}],
        },
        "test": {"rows": 6, "tokens": 384, "shards": [{"path": "test/part-00000.parquet", "rows": 6, "bytes": 512}]},
    },
}


def report_input(**overrides) -> ReportInput:
    steps = [
        StepSummary(
            "DataPipeline", "corpus", "Succeeded", 62, False, "", {"outputUri": "/r/data", "rowsIn": 100, "rowsOut": 72}
        ),
        StepSummary(
            "TrainingJob",
            "gpt",
            "Succeeded",
            180,
            False,
            "",
            {
                "step": 20,
                "totalSteps": 20,
                "modelUri": "/r/ckpt/model",
                "modelVersion": "v-abc",
                "tokensPerSecond": 950.0,
                "evalMetrics": {"loss": 4.2, "perplexity": 66.7},
                "bestMetrics": {"loss": 4.2, "perplexity": 66.7},
                "testMetrics": {"loss": 4.3, "perplexity": 73.7},
            },
        ),
        StepSummary(
            "ModelDeployment", "gpt", "Ready", 20, False, "", {"url": "http://127.0.0.1:8000", "modelVersion": "v-abc"}
        ),
    ]
    values = {
        "run_id": "20250101-000000",
        "paths": ["examples/quickstart"],
        "started_at": "2025-01-01T00:00:00Z",
        "seconds": 270,
        "cpus": 2,
        "steps": steps,
        "datasets": {"corpus": MANIFEST},
        "curves": {"gpt": Curves(parse_curve_csv(TRAIN_CSV), parse_curve_csv(EVAL_CSV))},
        "samples": {
            "gpt": {
                "task": "languageModeling",
                "prompt": "The Python",
                "answer": " module",
                "url": "http://127.0.0.1:8000",
            }
        },
        "commands": {"gpt": ["curl -s http://127.0.0.1:8000/v1/models"]},
    }
    values.update(overrides)
    return ReportInput(**values)


def test_parse_curve_csv_types_and_skips_empty_cells():
    rows = parse_curve_csv(TRAIN_CSV)
    assert rows[0] == {
        "step": 10,
        "epoch": 0.1,
        "loss": 5.0,
        "learning_rate": 0.001,
        "tokens_per_second": 900.0,
        "elapsed_seconds": 3.0,
    }
    assert parse_curve_csv("step,loss\n,1\n") == [], "a row without a step is no point of the curve"


def test_eval_series_and_metric_names():
    curves = Curves([], parse_curve_csv(EVAL_CSV))
    assert eval_series(curves, "validation", "loss") == ([10, 20], [5.1, 4.2])
    assert eval_series(curves, "test", "perplexity") == ([20], [73.7])
    assert eval_metric_names(curves) == ["loss", "perplexity"]


def test_read_curves_from_the_checkpoint_logs(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.csv").write_text(TRAIN_CSV)
    curves = read_curves(str(tmp_path))
    assert [r["step"] for r in curves.train] == [10, 20]
    assert curves.evals == []
    assert read_curves(str(tmp_path / "missing")) == Curves()


def test_report_shows_steps_data_statistics_metrics_and_endpoint():
    text = render_report(report_input(), {"data:corpus": "data-corpus.png", "train:gpt": "training-gpt.png"})
    assert text.startswith("# kubeforge run 20250101-000000\n")
    assert "| 1 | DataPipeline/corpus | Succeeded | 1m02s | rows 100 -> 72 |" in text
    assert "| exactDedup | 95 | 80 | 15 | 15.8% | 0 |" in text
    assert "| nearDedup | 80 | 72 | 7 | 8.8% | 1 |" in text
    assert "Exact duplicates across splits (leakage check): 0." in text
    assert "| train | 60 | 3,840 | 1 | 2.0kB |" in text
    assert "![rows per operation](data-corpus.png)" in text
    assert "![loss and evaluation curves](training-gpt.png)" in text
    assert "| test | 4.3 | 73.7 |" in text
    assert "| train (step 20) | 4 |  |" in text
    assert "Endpoint `http://127.0.0.1:8000`" in text
    assert "The Python module" in text
    assert "curl -s http://127.0.0.1:8000/v1/models" in text


def test_report_of_a_failed_and_a_skipped_step():
    steps = [
        StepSummary("DataPipeline", "corpus", "Succeeded", 60, True, "up to date: Succeeded at generation 1", {}),
        StepSummary("TrainingJob", "gpt", "Failed", 3, False, "TrainingJob/gpt: spec.x: bad | worse", {}),
    ]
    text = render_report(report_input(steps=steps, datasets={}, curves={}, samples={}, commands={}), {})
    assert (
        "| 1 | DataPipeline/corpus | Succeeded | 1m00s (earlier run) | up to date: Succeeded at generation 1 |" in text
    )
    assert "| 2 | TrainingJob/gpt | Failed | 3s | TrainingJob/gpt: spec.x: bad / worse |" in text
    assert "No loss curve was found" in text


def test_write_report_draws_png_plots(tmp_path):
    path = write_report(tmp_path / "report", report_input())
    assert path == tmp_path / "report" / "report.md"
    for name in ("data-corpus.png", "training-gpt.png"):
        png = (tmp_path / "report" / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        assert f"]({name})" in path.read_text()
