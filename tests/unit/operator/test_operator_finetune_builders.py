"""examples/finetune through the operator's pure builders: the RayJobs of its two DataPipelines and its SFT and DPO
TrainingJobs, and the RayService of its chat deployment, hand the driver the same wire-form spec `kubeforge run`
does, and validate against the KubeRay CRDs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubeforge.api import DataPipeline, ModelDeployment, TrainingJob
from kubeforge.builders import ResolvedModel, build_rayjob, build_rayservice
from kubeforge.config import OperatorConfig
from shipped import FINETUNE, validated
from support.schemas import pod_template_errors, schema_errors

TYPES = {"DataPipeline": DataPipeline, "TrainingJob": TrainingJob, "ModelDeployment": ModelDeployment}


def finetune_bodies() -> list[dict[str, Any]]:
    """The shipped finetune manifests (validated) with the metadata an API server adds."""
    bodies = []
    for manifest in validated(FINETUNE):
        body = json.loads(json.dumps(manifest.raw))
        body["metadata"].update(namespace="ml", uid=f"uid-{manifest.name}", generation=1)
        bodies.append(body)
    return bodies


def children(config: OperatorConfig) -> dict[str, dict[str, Any]]:
    """Each finetune resource's name to the KubeRay object the operator builds for it."""
    built = {}
    for body in finetune_bodies():
        resource = TYPES[body["kind"]].model_validate(body)
        name = body["metadata"]["name"]
        if body["kind"] == "ModelDeployment":
            built[name] = build_rayservice(resource, config, model=ResolvedModel("s3://models/finetune-dpo"))
        elif body["kind"] == "TrainingJob":
            built[name] = build_rayjob(resource, config, raw_spec=body["spec"], data_uri=f"s3://data/{name}")
        else:
            built[name] = build_rayjob(resource, config, raw_spec=body["spec"])
    return built


def driver_resource(rayjob: dict[str, Any]) -> dict[str, Any]:
    """The resource document a RayJob hands its driver."""
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    return json.loads(env["KUBEFORGE_RESOURCE"])


def test_the_finetune_chain_builds_one_child_per_resource(config: OperatorConfig) -> None:
    built = children(config)
    assert {name: child["kind"] for name, child in built.items()} == {
        "finetune-instructions": "RayJob",
        "finetune-preferences": "RayJob",
        "finetune-sft": "RayJob",
        "finetune-dpo": "RayJob",
        "finetune-chat": "RayService",
    }


@pytest.mark.parametrize("name", ["finetune-instructions", "finetune-preferences", "finetune-sft", "finetune-dpo"])
def test_each_rayjob_hands_the_driver_the_spec_a_local_run_does(config: OperatorConfig, name: str) -> None:
    manifest = next(m for m in validated(FINETUNE) if m.name == name)
    assert driver_resource(children(config)[name])["spec"] == manifest.resource.to_wire()["spec"]


def test_the_driver_specs_carry_the_derivations_and_objectives(config: OperatorConfig) -> None:
    built = children(config)
    spec = {name: driver_resource(child)["spec"] for name, child in built.items() if child["kind"] == "RayJob"}
    assert spec["finetune-instructions"]["source"]["builtin"]["derive"] == "instructions"
    assert spec["finetune-instructions"]["tokenizer"]["task"] == "chat"
    assert spec["finetune-preferences"]["source"]["builtin"]["derive"] == "preferences"
    assert spec["finetune-preferences"]["tokenizer"]["task"] == "preference"
    assert spec["finetune-sft"]["objective"] == "sft"
    assert spec["finetune-dpo"]["objective"] == "dpo"
    assert spec["finetune-dpo"]["model"]["lora"]["rank"] == 8
    assert spec["finetune-dpo"]["model"]["pretrained"]["uri"] == "runs/finetune/sft/model"


def test_every_finetune_child_validates_against_kuberay_and_kubernetes(
    config: OperatorConfig, kuberay_validators: dict[str, Any]
) -> None:
    for name, child in children(config).items():
        assert schema_errors(kuberay_validators, child) == [], name
        assert pod_template_errors(child) == [], name
