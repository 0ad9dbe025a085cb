"""The locally applied objects: absolute locations, generation bumps on spec changes, stable uid, typed round trip."""

from __future__ import annotations

from pathlib import Path

from kubeforge.api import DataPipeline, TrainingJob
from kubeforge.constants import ANNOTATION_SPEC_HASH
from kubeforge.local.resources import (
    ResourceStore,
    absolute_location,
    applied_object,
    spec_hash,
    typed,
    with_absolute_locations,
)

BASE = Path("/work/project")


def test_absolute_location():
    assert absolute_location("runs/data", BASE) == "/work/project/runs/data"
    assert absolute_location("./runs/../data", BASE) == "/work/project/data"
    assert absolute_location("/abs/path", BASE) == "/abs/path"
    assert absolute_location("s3://bucket/x", BASE) == "s3://bucket/x"
    assert absolute_location("file:///data/x", BASE) == "file:///data/x"
    assert absolute_location("~/x", BASE) == str(Path.home() / "x")


def test_every_location_field_of_each_kind_is_made_absolute(datapipeline, trainingjob, modeldeployment):
    dp = datapipeline()
    dp["spec"]["source"] = {"uris": ["in/a.jsonl", "s3://b/c.jsonl"], "format": "jsonl"}
    dp["spec"]["tokenizer"] = {"path": "tok.json"}
    out = with_absolute_locations("DataPipeline", dp, BASE)
    assert out["spec"]["source"]["uris"] == ["/work/project/in/a.jsonl", "s3://b/c.jsonl"]
    assert out["spec"]["tokenizer"]["path"] == "/work/project/tok.json"
    assert out["spec"]["output"]["uri"] == "/work/project/runs/corpus/data"
    assert dp["spec"]["output"]["uri"] == "runs/corpus/data", "the input is not modified"

    tj = trainingjob(data=None)
    tj["spec"]["dataRef"]["uri"] = "data"
    tj["spec"]["output"] = {"uri": "model"}
    tj["spec"]["model"]["pretrained"] = {"uri": "base-model"}
    out = with_absolute_locations("TrainingJob", tj, BASE)
    assert out["spec"]["dataRef"]["uri"] == "/work/project/data"
    assert out["spec"]["checkpoint"]["uri"] == "/work/project/runs/gpt/checkpoints"
    assert out["spec"]["output"]["uri"] == "/work/project/model"
    assert out["spec"]["model"]["pretrained"]["uri"] == "/work/project/base-model"

    md = modeldeployment()
    md["spec"] = {"modelUri": "m", "canary": {"modelUri": "c", "trafficPercent": 10}}
    out = with_absolute_locations("ModelDeployment", md, BASE)
    assert (out["spec"]["modelUri"], out["spec"]["canary"]["modelUri"]) == ("/work/project/m", "/work/project/c")


def test_spec_hash_ignores_key_order_and_sees_values():
    assert spec_hash({"a": 1, "b": {"c": 2}}) == spec_hash({"b": {"c": 2}, "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})


def test_generation_starts_at_one_and_bumps_only_when_the_spec_changes(datapipeline):
    wire = datapipeline()
    first = applied_object(None, wire, "2025-01-01T00:00:00Z")
    meta = first["metadata"]
    assert meta["generation"] == 1
    assert meta["namespace"] == "default"
    assert meta["annotations"][ANNOTATION_SPEC_HASH] == spec_hash(wire["spec"])
    same = applied_object(first, wire, "2025-01-02T00:00:00Z")
    assert same["metadata"]["generation"] == 1
    assert same["metadata"]["uid"] == meta["uid"]
    assert same["metadata"]["creationTimestamp"] == "2025-01-01T00:00:00Z"
    changed = datapipeline()
    changed["spec"]["source"]["builtin"]["maxDocuments"] = 51
    bumped = applied_object(same, changed, "2025-01-03T00:00:00Z")
    assert bumped["metadata"]["generation"] == 2
    assert bumped["metadata"]["uid"] == meta["uid"]


def test_user_annotations_are_kept(trainingjob):
    wire = trainingjob()
    wire["metadata"]["annotations"] = {"team": "nlp"}
    obj = applied_object(None, wire, "2025-01-01T00:00:00Z")
    assert obj["metadata"]["annotations"]["team"] == "nlp"


def test_store_round_trip_gives_the_typed_resource_the_entry_points_take(tmp_path, datapipeline, trainingjob):
    store = ResourceStore(tmp_path)
    assert store.get("DataPipeline", "corpus") is None
    obj = store.apply(with_absolute_locations("DataPipeline", datapipeline(), BASE), "2025-01-01T00:00:00Z")
    assert store.get("DataPipeline", "corpus") == obj
    resource = typed(obj)
    assert isinstance(resource, DataPipeline)
    assert resource.spec.output.uri == "/work/project/runs/corpus/data"
    assert resource.metadata.model_extra["generation"] == 1
    again = store.apply(with_absolute_locations("DataPipeline", datapipeline(), BASE), "2025-01-02T00:00:00Z")
    assert again["metadata"]["generation"] == 1
    assert isinstance(typed(store.apply(trainingjob(), "2025-01-01T00:00:00Z")), TrainingJob)
