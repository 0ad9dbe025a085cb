"""Spec checks the data step makes before any work: each failure names its field."""

from __future__ import annotations

import pytest
from kubeforge.api import DataPipelineSpec
from kubeforge_trainer.data.errors import DataPipelineError, find_pipeline_error
from kubeforge_trainer.data.plan import plan_pipeline


def spec(**changes) -> DataPipelineSpec:
    wire = {"source": {"uris": ["/data"], "format": "jsonl"}, "output": {"uri": "/out"}, **changes}
    return DataPipelineSpec.model_validate(wire)


def test_segments_split_at_whole_dataset_operations():
    plan = plan_pipeline(
        spec(
            steps=[
                {"dropEmpty": {}},
                {"stripHtml": {}},
                {"exactDedup": {}},
                {"lengthFilter": {"minChars": 3}, "name": "short"},
                {"nearDedup": {}},
            ]
        )
    )
    layout = [(s.global_step.kind if s.global_step else None, [x.name for x in s.local_steps]) for s in plan.segments]
    assert layout == [(None, ["dropEmpty", "stripHtml"]), ("exactDedup", ["short"]), ("nearDedup", [])]
    assert plan.read.allow_missing_text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": {"uris": ["/d"], "builtin": {}}}, "spec.source: set exactly one of uris, pvc or builtin"),
        ({"tokenizer": {"task": "classification"}}, "spec.tokenizer.task: classification needs labels"),
        ({"split": {"method": "hash"}}, "spec.split.keyField: method hash needs keyField"),
        ({"split": {"method": "time"}}, "spec.split.keyField: method time needs keyField"),
        ({"split": {"method": "stratified"}}, "spec.split.method: stratified needs labels"),
        ({"split": {"train": 0.5, "validation": 0.1, "test": 0.1}}, "spec.split: train \\+ validation \\+ test"),
        ({"steps": [{"nearDedup": {"numPerm": 100, "bands": 16}}]}, "spec.steps\\[0\\].nearDedup.bands"),
        ({"steps": [{"lengthFilter": {"minChars": 9, "maxChars": 3}}]}, "spec.steps\\[0\\].lengthFilter.minChars"),
        (
            {"steps": [{"label": {"rules": [{"label": "x", "pattern": "(?<=a)b"}]}}]},
            "spec.steps\\[0\\].label.rules\\[0\\].pattern: .*RE2",
        ),
        ({"steps": [{"dropEmpty": {}, "stripHtml": {}}]}, "spec.steps\\[0\\]: a step sets exactly one operation"),
        (
            {"source": {"uris": ["/d"], "format": "text", "labelField": "y"}},
            "spec.source.labelField: format text has no fields",
        ),
        (
            {"source": {"builtin": {}}, "steps": [{"outlierFilter": {"column": "n"}}]},
            "spec.steps\\[0\\].outlierFilter.column: the builtin corpus has no numeric columns",
        ),
        ({"tokenizer": {"path": "/t.json", "train": {}}}, "spec.tokenizer: set either path or train"),
        (
            {"tokenizer": {"fromModel": "/m", "train": {}}},
            "spec.tokenizer.fromModel: fromModel excludes path and train",
        ),
        ({"tokenizer": {"extend": {}}}, "spec.tokenizer.extend: extend needs a base tokenizer"),
        (
            {"source": {"uris": ["/d"], "format": "text"}, "tokenizer": {"task": "chat"}},
            "spec.tokenizer.task: chat reads conversations from jsonl, parquet or csv rows",
        ),
        (
            {"source": {"builtin": {}}, "tokenizer": {"task": "preference"}},
            "spec.source.builtin.derive: documents rows are for tokenizer.task languageModeling or classification, "
            "not preference",
        ),
        (
            {"source": {"builtin": {"derive": "instructions"}}, "tokenizer": {"task": "preference"}},
            "spec.source.builtin.derive: instructions rows are for tokenizer.task chat, not preference",
        ),
        (
            {"source": {"builtin": {"derive": "preferences"}}},
            "spec.source.builtin.derive: preferences rows are for tokenizer.task preference, not languageModeling",
        ),
    ],
)
def test_bad_specs_name_the_field(changes, message):
    with pytest.raises(DataPipelineError, match=message):
        plan_pipeline(spec(**changes))


def test_split_key_falls_back_to_the_source_fields():
    plan = plan_pipeline(spec(source={"uris": ["/d"], "keyField": "id"}, split={"method": "hash"}))
    assert plan.read.key_field == "id" and plan.read.key_field_path == "spec.source.keyField"
    plan = plan_pipeline(spec(source={"uris": ["/d"], "timeField": "ts"}, split={"method": "time", "keyField": "t2"}))
    assert plan.read.time_field == "t2"


def test_errors_are_found_behind_ray_style_wrappers():
    original = DataPipelineError("spec.source: broken")

    class TaskError(Exception):
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last): ...")
            self.cause = cause

    try:
        try:
            raise TaskError(original)
        except TaskError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert find_pipeline_error(outer) is original
    assert find_pipeline_error(ValueError("x")) is None
    assert str(DataPipelineError("two\n  lines")) == "two lines"


def test_warm_up_rows_go_through_every_row_local_operation():
    from kubeforge_trainer.data import ops, stages

    steps = [
        {"dropEmpty": {}},
        {"stripHtml": {}},
        {"normalizeUnicode": {}},
        {"collapseWhitespace": {}},
        {"maskPii": {}},
        {"lengthFilter": {"minChars": 1}},
        {"qualityFilter": {"minAlnumRatio": 0.1}},
        {"scriptFilter": {"scripts": ["latin"]}},
        {"label": {"rules": [{"label": "cafe", "keywords": ["bar"]}], "default": "other"}},
    ]
    local = plan_pipeline(spec(steps=steps)).segments[0].local_steps
    assert {s.kind for s in local} == set(ops.LOCAL_OPERATIONS)
    # warm_up swallows errors (the real tasks report them), so check here that its rows pass every operation.
    table, counts = stages.apply_local_steps(stages.warm_up_table(), local)
    assert counts[0][:2] == (4, 2) and table.num_rows == 2
    assert table.column("label").to_pylist() == ["cafe", "other"]
    stages.warm_up(local)


@pytest.mark.parametrize(("derive", "task"), [("instructions", "chat"), ("preferences", "preference")])
def test_builtin_derivations_feed_their_conversation_task(derive, task):
    plan = plan_pipeline(spec(source={"builtin": {"derive": derive}}, tokenizer={"task": task}))
    assert plan.read.conversation == task and plan.conversational
