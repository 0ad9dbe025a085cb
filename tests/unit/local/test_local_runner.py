"""The runner's glue without Ray: steps that cannot start fail in one line, block what depends on them, and are
written to the status files and the report as the operator would; manifest discovery skips the run's own files."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kubeforge import conditions as c
from kubeforge.local.plan import plan_run
from kubeforge.local.runner import (
    LocalRun,
    RunOptions,
    manifest_paths,
    model_exported,
    one_line,
    root_cause,
)
from kubeforge.local.status import StatusStore
from kubeforge.validate import validate_paths


def test_manifest_paths_skip_hidden_directories_and_outputs(tmp_path):
    (tmp_path / "a.yaml").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("x")
    (tmp_path / ".kubeforge" / "status").mkdir(parents=True)
    (tmp_path / ".kubeforge" / "status" / "s.yaml").write_text("x")
    (tmp_path / "runs" / "data").mkdir(parents=True)
    (tmp_path / "runs" / "data" / "_manifest.json").write_text("{}")
    explicit = tmp_path / "runs" / "data" / "_manifest.json"
    assert manifest_paths([tmp_path, explicit]) == [tmp_path / "a.yaml", tmp_path / "sub" / "b.yml", explicit]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert manifest_paths([empty]) == [empty], "kept, so that validation reports the empty directory"


def test_root_cause_and_one_line():
    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("RayTaskError\nTraceback (most recent call last):\n ...")
            self.cause = cause

    inner = ValueError("TrainingJob/x: spec.y: bad\nmore detail")
    try:
        try:
            raise inner
        except ValueError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert root_cause(Wrapper(outer)) is inner
    assert one_line(inner) == "TrainingJob/x: spec.y: bad"
    assert one_line(KeyError()) == "KeyError"


def test_a_step_that_cannot_start_fails_in_one_line_and_blocks_its_dependents(
    write_manifests, tmp_path, trainingjob, modeldeployment
):
    (tmp_path / "not-a-dataset").mkdir()
    job = trainingjob("gpt", None)
    job["spec"]["dataRef"]["uri"] = "not-a-dataset"
    path = write_manifests(job, modeldeployment("md", "gpt"))
    out = io.StringIO()
    code = LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), out).run()
    text = out.getvalue()
    assert code == 1
    assert "Traceback" not in text
    assert (
        f"✗ TrainingJob/gpt Failed: spec.dataRef.uri: {tmp_path}/not-a-dataset holds no complete dataset "
        "(_manifest.json is missing)" in text
    )
    assert "starting a local Ray" not in text, "nothing needed Ray"
    assert "1 problem" not in text
    assert "2 step(s) did not complete: TrainingJob/gpt (Failed), ModelDeployment/md (Pending)" in text

    store = StatusStore(tmp_path / ".kubeforge")
    job_status = store.get("TrainingJob", "gpt")
    assert job_status["phase"] == "Failed"
    assert job_status["observedGeneration"] == 1
    assert c.is_true(job_status["conditions"], c.FAILED)
    md_status = store.get("ModelDeployment", "md")
    assert md_status["phase"] == "Pending"
    assert c.get_condition(md_status["conditions"], c.MODEL_READY)["reason"] == "TrainingJobFailed"

    reports = list((tmp_path / ".kubeforge" / "report").glob("*/report.md"))
    assert len(reports) == 1
    assert "| 2 | ModelDeployment/md | Pending |" in reports[0].read_text()


def test_a_changed_spec_is_a_new_generation_with_a_fresh_status(write_manifests, tmp_path, trainingjob):
    job = trainingjob("gpt", None)
    job["spec"]["dataRef"]["uri"] = "missing"
    path = write_manifests(job)
    store = StatusStore(tmp_path / ".kubeforge")

    def run_once() -> dict:
        LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), io.StringIO()).run()
        return store.get("TrainingJob", "gpt")

    first = run_once()
    assert first["observedGeneration"] == 1
    store.put("TrainingJob", "gpt", {"step": 7})  # progress of the old spec
    assert run_once()["step"] == 7, "same spec: same generation, progress kept"
    job["spec"]["training"]["maxSteps"] = 5
    path = write_manifests(job)
    second = run_once()
    assert second["observedGeneration"] == 2
    assert "step" not in second, "a new generation starts from a clean status"


def test_relative_locations_resolve_against_the_working_directory(write_manifests, tmp_path, datapipeline):
    path = write_manifests(datapipeline("corpus"))
    run = LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), io.StringIO())
    steps, _ = plan_run(validate_paths([path]).manifests, {})
    run._apply(steps)
    stored = run.objects[("DataPipeline", "corpus")]
    assert stored["spec"]["output"]["uri"] == str(Path(tmp_path) / "runs/corpus/data")
    assert stored["metadata"]["generation"] == 1


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_log(
    write_manifests, tmp_path, monkeypatch, capsys, datapipeline
):
    path = write_manifests(datapipeline("corpus"))

    def broken(self, step):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(LocalRun, "_run_step", broken)
    code = LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), io.StringIO()).run()
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("kubeforge run: unexpected error in DataPipeline/corpus: something inside broke (traceback: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    status = StatusStore(tmp_path / ".kubeforge").get("DataPipeline", "corpus")
    assert status["phase"] == "Failed"
    log = next((tmp_path / ".kubeforge" / "logs").glob("*/run.log")).read_text()
    assert "Traceback" in log and "second line" in log


def test_new_resources_are_pending_on_what_they_reference_until_they_run(
    write_manifests, tmp_path, datapipeline, trainingjob, modeldeployment
):
    path = write_manifests(datapipeline("corpus"), trainingjob("gpt", "corpus"), modeldeployment("md", "gpt"))
    run = LocalRun(RunOptions(paths=[str(path)], workdir=tmp_path, plain=True, num_cpus=4), io.StringIO())
    steps, _ = plan_run(validate_paths([path]).manifests, {})
    run._apply(steps)
    store = StatusStore(tmp_path / ".kubeforge")
    assert store.get("DataPipeline", "corpus") == {}, "nothing to wait for"
    job = store.get("TrainingJob", "gpt")
    assert job["phase"] == "Pending" and job["message"] == "waits for DataPipeline/corpus"
    assert c.get_condition(job["conditions"], c.DATA_READY)["reason"] == "DataPipelineNotReady"
    md = store.get("ModelDeployment", "md")
    assert c.get_condition(md["conditions"], c.MODEL_READY)["reason"] == "TrainingJobNotReady"
    store.put("TrainingJob", "gpt", {"phase": "Succeeded"})
    run._apply(steps)
    assert store.get("TrainingJob", "gpt")["phase"] == "Succeeded", "an existing status is left alone"


def test_a_full_export_and_a_lora_adapter_export_both_count_as_exported(tmp_path):
    # what makes a finished TrainingJob up to date in `kubeforge run` (else it trains again on every run)
    full, adapter, empty = (tmp_path / n for n in ("full", "adapter", "empty"))
    for directory in (full, adapter, empty):
        directory.mkdir()
    (full / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    # lora.export: adapter writes peft's files and no config.json
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    assert [model_exported(str(d)) for d in (full, adapter, empty)] == [True, True, False]
    assert not model_exported(None) and not model_exported(str(tmp_path / "missing"))
