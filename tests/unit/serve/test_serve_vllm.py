"""spec.engine vllm: refused without GPUs by validation (one line), built as a Ray Serve LLM application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.api import ModelDeployment
from kubeforge.builders.rayservice import ResolvedModel, build_rayservice
from kubeforge.config import OperatorConfig
from kubeforge.validate import validate_document
from support.schemas import load_validators, schema_errors


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {"modelUri": "s3://models/llama", "engine": "vllm", **spec},
    }


def problems(doc: dict[str, Any]) -> list[str]:
    return [str(p) for p in validate_document("md.yaml", doc)[1]]


def test_vllm_without_gpus_is_refused_with_one_line() -> None:
    (problem,) = problems(manifest())
    assert "spec.engine vllm needs GPUs" in problem and "\n" not in problem
    (problem,) = problems(manifest(resources={"gpu": 0}))
    assert "spec.resources.gpu" in problem
    assert problems(manifest(resources={"gpu": 1})) == []
    assert problems({**manifest(), "spec": {"modelUri": "s3://m"}}) == []  # transformers, the default, runs on CPU
    (problem,) = problems(manifest(resources={"gpu": 1}, adapters=[{"name": "a", "uri": "s3://a"}]))
    assert "does not support canary, adapters" in problem


def test_vllm_is_a_ray_serve_llm_app_valid_for_kuberay(kuberay_crds_dir: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = {"resources": {"gpu": 2, "cpu": 8, "memory": "64Gi"}, "replicas": {"min": 1, "max": 3}}
    typed = ModelDeployment.model_validate(manifest(**spec))
    rayservice = build_rayservice(typed, OperatorConfig(), model=ResolvedModel("s3://models/llama", "v4"))
    assert schema_errors(load_validators(kuberay_crds_dir), rayservice) == []
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    (llm,) = app["args"]["llm_configs"]
    assert llm["model_loading_config"] == {"model_id": "llm", "model_source": "s3://models/llama"}
    assert llm["engine_kwargs"]["tensor_parallel_size"] == 2
    assert llm["deployment_config"]["autoscaling_config"]["max_replicas"] == 3
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] in (2, "2")


def test_the_transformers_app_refuses_a_vllm_resource() -> None:
    from kubeforge_trainer.serve.settings import parse_app_args

    with pytest.raises(ValueError, match="Ray Serve LLM"):
        parse_app_args({"resource": manifest(resources={"gpu": 1}), "modelVersion": "v1"}, read_version=str)
