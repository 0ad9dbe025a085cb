"""The CRDs are generated from the models, structural, fresh, and carry the CEL rules, columns and names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.api import RESOURCE_MODELS
from kubeforge.api.crdgen import build_crd, crd_files, stale_files, write_crds
from kubeforge.cli import main

REPO_ROOT = Path(__file__).resolve().parents[3]


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}" if path else key)
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schema(kind: str) -> dict[str, Any]:
    return build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("directory", ["crds", "charts/kubeforge/crds"])
def test_committed_crds_are_fresh(directory: str) -> None:
    path = REPO_ROOT / directory
    if directory.startswith("charts") and not (REPO_ROOT / "charts" / "kubeforge" / "Chart.yaml").exists():
        pytest.skip("the Helm chart does not exist yet")
    assert stale_files(path) == [], "run `kubeforge crds` to regenerate"


def test_staleness_is_detected_and_fixed(tmp_path: Path) -> None:
    write_crds(tmp_path)
    assert stale_files(tmp_path) == []
    victim = tmp_path / "kubeforge.dev_trainingjobs.yaml"
    victim.write_text(victim.read_text().replace("Transformer blocks.", "Blocks."))
    assert stale_files(tmp_path) == [str(victim)]
    assert main(["crds", "--check", "-o", str(tmp_path)]) == 1
    assert main(["crds", "-o", str(tmp_path)]) == 0
    assert main(["crds", "--check", "-o", str(tmp_path)]) == 0


@pytest.mark.parametrize(("kind", "short"), [("DataPipeline", "dp"), ("TrainingJob", "tj"), ("ModelDeployment", "md")])
def test_names_category_status_and_columns(kind: str, short: str) -> None:
    crd = build_crd(kind)
    names = crd["spec"]["names"]
    assert names["shortNames"] == [short] and names["categories"] == ["kubeforge"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age" and len(columns) >= 4
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("kind", sorted(RESOURCE_MODELS))
def test_schema_is_structural_and_every_field_is_described(kind: str) -> None:
    for path, node in _walk(_schema(kind)):
        int_or_string = node.get("x-kubernetes-int-or-string")
        assert "type" in node or int_or_string, f"{path}: no type"
        assert "$ref" not in node and "title" not in node, path
        if "anyOf" in node:
            assert int_or_string and node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and additionalProperties together"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: unbounded list (CEL cost estimation)"
        if path.startswith(("spec", "status")) and path.count(".") >= 1 and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{kind} {path}: no description"


def test_cel_rules_present_in_crds() -> None:
    rules = {
        kind: [r["rule"] for _, node in _walk(_schema(kind)) for r in node.get("x-kubernetes-validations", [])]
        for kind in RESOURCE_MODELS
    }
    assert any("self.train + self.validation + self.test" in r for r in rules["DataPipeline"])
    assert any("self.min <= self.max" in r for r in rules["ModelDeployment"])
    assert any("zeroStage == 3" in r for r in rules["TrainingJob"])
    assert all(len(r) >= 3 for r in rules.values())


def test_defaults_match_the_models() -> None:
    spec = _schema("TrainingJob")["properties"]["spec"]["properties"]
    # Object defaults are written out in full: the API server checks them against the rules as written.
    assert spec["deepspeed"]["default"] == {
        "zeroStage": 2,
        "offloadOptimizer": "none",
        "offloadParameters": "none",
        "config": {},
    }
    assert spec["deepspeed"]["properties"]["zeroStage"]["default"] == 2
    assert spec["training"]["properties"]["betas"]["default"] == [0.9, 0.95]
    assert spec["deepspeed"]["properties"]["config"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["training"]["properties"]["learningRate"]["exclusiveMinimum"] is True


def test_generated_files_are_yaml_of_the_crds() -> None:
    for name, text in crd_files().items():
        doc = yaml.safe_load(text)
        assert name == f"kubeforge.dev_{doc['spec']['names']['plural']}.yaml"
        assert doc["kind"] == "CustomResourceDefinition"


@pytest.mark.parametrize("kind", sorted(RESOURCE_MODELS))
def test_crd_validates_against_the_kubernetes_openapi_schema(kind: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    crd = build_crd(kind)
    kubernetes_validate.validate(crd, "1.30", strict=True)
    broken = build_crd(kind)
    broken["spec"]["versions"][0]["subresource"] = {"status": {}}  # misspelled field must be caught
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def test_the_generator_writes_structural_forms_for_any_new_field() -> None:
    """Other kinds' new fields get the same treatment: object defaults in full, field-less models as empty maps,
    free-form mappings preserved, every string and map of a spec bounded."""
    from typing import Any as AnyValue

    from kubeforge.api.common import ApiModel, cel, cel_rules
    from kubeforge.api.crdgen import openapi_schema
    from pydantic import Field

    class Empty(ApiModel):
        """Nothing."""

    class Inner(ApiModel):
        """Inner."""

        model_config = cel_rules(cel("self.low <= self.high", "low <= high"))
        low: int = Field(default=1, description="Low.")
        high: int = Field(default=2, description="High.")

    class Outer(ApiModel):
        """Outer."""

        inner: Inner = Field(default_factory=Inner, description="Inner.")
        flag: Empty | None = Field(default=None, description="A flag.")
        free: dict[str, AnyValue] = Field(default_factory=dict, description="Passthrough.")

    schema = openapi_schema(Outer)
    props = schema["properties"]
    assert props["inner"]["default"] == {"low": 1, "high": 2}
    assert props["flag"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "maxProperties": 0,
        "description": "A flag.",
    }
    assert props["free"]["x-kubernetes-preserve-unknown-fields"] is True and "additionalProperties" not in props["free"]
