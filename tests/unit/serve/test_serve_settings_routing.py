"""From build_app arguments to Serve options; canary routing; context checks of the model runner (pure)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kubeforge.api.modeldeployment import BatchingSpec, GenerationDefaults, ModelDeploymentSpec
from kubeforge_trainer.serve.engine import SamplingParams
from kubeforge_trainer.serve.metrics import PROMETHEUS_NAMES, REQUESTS, prometheus_name
from kubeforge_trainer.serve.protocol import ApiError, CompletionRequest
from kubeforge_trainer.serve.routing import UNMATCHED_ROUTE, choose_version, pinned_version, route_label
from kubeforge_trainer.serve.runner import check_classify_lengths, resolve_sampling
from kubeforge_trainer.serve.settings import (
    CANARY,
    STABLE,
    ModelVersion,
    admission_limits,
    batch_limits,
    model_user_config,
    parse_app_args,
    parse_model_user_config,
    parse_quantity,
    scaling_options,
    server_deployment_options,
    torch_threads,
)


def resource(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "gpt", "namespace": "ml"},
        "spec": {"modelUri": "s3://b/m1", **spec},
    }


def no_version(uri: str) -> str:
    raise AssertionError(f"version of {uri} should come from the arguments")


def test_parse_args_with_canary() -> None:
    args = {
        "resource": resource(canary={"modelUri": "s3://b/m2", "trafficPercent": 25}),
        "modelUri": "s3://b/resolved",
        "modelVersion": "v1",
        "canaryModelVersion": "v2",
    }
    settings = parse_app_args(args, no_version)
    assert (settings.name, settings.namespace) == ("gpt", "ml")
    assert settings.versions == (
        ModelVersion(STABLE, "v1", "s3://b/resolved", 75),
        ModelVersion(CANARY, "v2", "s3://b/m2", 25),
    )


def test_parse_args_reads_missing_versions_and_accepts_json() -> None:
    import json

    settings = parse_app_args({"resource": json.dumps(resource())}, lambda uri: f"ver-of-{uri}")
    assert settings.versions == (ModelVersion(STABLE, "ver-of-s3://b/m1", "s3://b/m1", 100),)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "args\\['resource'\\]"),
        ({"resource": {**resource(), "spec": {"modelRef": {"name": "tj"}}}}, "no model to serve"),
        ({"resource": resource(canary={"modelRef": {"name": "tj"}}), "modelVersion": "v1"}, "no canary model"),
        (
            {"resource": resource(canary={"modelUri": "x"}), "modelVersion": "v", "canaryModelVersion": "v"},
            "both version",
        ),
        ({"resource": resource(), "modelVersion": "v", "canaryModelUri": "x"}, "spec.canary is not"),
        ({"resource": resource(quantization="int8", resources={"gpu": 1}), "modelVersion": "v"}, "int8"),
    ],
)
def test_parse_args_rejects(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_app_args(args, lambda uri: "v0")


def test_invalid_resource_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_app_args({"resource": resource(replicas={"min": 3, "max": 1, "bogus": 1})}, no_version)


@pytest.mark.parametrize(
    ("value", "number"),
    [(2, 2.0), ("500m", 0.5), ("1.5", 1.5), ("2Gi", 2 * 2**30), ("512Mi", 512 * 2**20), ("1G", 1e9), ("1e3", 1e3)],
)
def test_parse_quantity(value: int | str, number: float) -> None:
    assert parse_quantity(value) == number


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_quantity("2 bananas")


def test_fixed_and_autoscaled_replicas() -> None:
    spec = ModelDeploymentSpec.model_validate({"modelUri": "x", "replicas": {"min": 2, "max": 2}})
    assert scaling_options(spec.replicas) == {"num_replicas": 2}
    spec = ModelDeploymentSpec.model_validate(
        {"modelUri": "x", "replicas": {"min": 0, "max": 4, "targetOngoingRequests": 3}}
    )
    assert scaling_options(spec.replicas) == {
        "autoscaling_config": {
            "min_replicas": 0,
            "max_replicas": 4,
            "initial_replicas": 1,
            "target_ongoing_requests": 3,
        }
    }


def test_server_deployment_options_map_every_field() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "modelUri": "x",
            "replicas": {"min": 1, "max": 3, "maxOngoingRequests": 8, "maxQueuedRequests": 20},
            "resources": {"cpu": "1500m", "memory": "1Gi", "gpu": 1},
            "batching": {"enabled": True, "maxBatchSize": 4, "maxWaitMs": 10},
            "generation": {"maxTokens": 9, "temperature": 0.5, "topP": 0.8, "stop": ["\n"]},
        }
    )
    options = server_deployment_options(spec)
    assert admission_limits(spec) == (8, 20)
    # The replica admits 8 + 20 model requests itself (JSON 503 beyond); Serve lets it take a few more.
    assert options["max_ongoing_requests"] > 8 + 20
    assert options["max_queued_requests"] == 3 * options["max_ongoing_requests"]  # what 3 replicas accept
    assert options["ray_actor_options"] == {"num_cpus": 1.5, "memory": float(2**30), "num_gpus": 1}
    assert options["autoscaling_config"]["max_replicas"] == 3
    config = parse_model_user_config(options["user_config"])
    assert config.adapters == () and config.limits == spec.limits
    assert config.batching == spec.batching and config.generation == spec.generation
    assert torch_threads(spec) == 1


def test_direct_ingress_places_one_replica_per_node() -> None:
    spec = ModelDeploymentSpec.model_validate({"modelUri": "x", "replicas": {"min": 1, "max": 3}})
    assert "max_replicas_per_node" not in server_deployment_options(spec)
    direct = spec.model_copy(update={"ingress": "direct"})
    assert server_deployment_options(direct)["max_replicas_per_node"] == 1


def test_batch_limits() -> None:
    assert batch_limits(BatchingSpec(enabled=True, max_batch_size=8, max_wait_ms=20)) == (8, 0.02)
    assert batch_limits(BatchingSpec(enabled=False, max_batch_size=8, max_wait_ms=20)) == (1, 0.0)


def test_user_config_is_json_ready() -> None:
    import json

    spec = ModelDeploymentSpec.model_validate({"modelUri": "x"})
    assert json.loads(json.dumps(model_user_config(spec))) == model_user_config(spec)


VERSIONS = (ModelVersion(STABLE, "v1", "a", 70), ModelVersion(CANARY, "v2", "b", 30))


def test_choose_version_edges() -> None:
    assert choose_version(VERSIONS, 0.0).version == "v1"
    assert choose_version(VERSIONS, 0.6999).version == "v1"
    assert choose_version(VERSIONS, 0.7).version == "v2"
    assert choose_version(VERSIONS, 0.99999).version == "v2"
    only_stable = (ModelVersion(STABLE, "v1", "a", 100), ModelVersion(CANARY, "v2", "b", 0))
    assert {choose_version(only_stable, d / 100).version for d in range(100)} == {"v1"}


def test_choose_version_split_with_uniform_draws() -> None:
    rng = random.Random(0)
    canary = sum(choose_version(VERSIONS, rng.random()).role == CANARY for _ in range(10_000))
    assert 2850 <= canary <= 3150


def test_pinned_version() -> None:
    assert pinned_version(None, "gpt", VERSIONS) is None
    assert pinned_version("gpt", "gpt", VERSIONS) is None
    assert pinned_version("gpt:v2", "gpt", VERSIONS) == VERSIONS[1]
    assert pinned_version("v1", "gpt", VERSIONS) == VERSIONS[0]
    error = pinned_version("other", "gpt", VERSIONS)
    assert isinstance(error, ApiError) and (error.status, error.code) == (404, "model_not_found")


@pytest.mark.parametrize(
    ("path", "route"),
    [("/v1/completions", "/v1/completions"), ("/v1/completions/", "/v1/completions"), ("/admin", UNMATCHED_ROUTE)],
)
def test_route_label(path: str, route: str) -> None:
    assert route_label(path) == route


DEFAULTS = GenerationDefaults(max_tokens=20, temperature=0.7, top_p=0.9, stop=["\n"])


def test_resolve_sampling_applies_defaults_and_shortens_the_default_length() -> None:
    request = CompletionRequest(prompts=("x",))
    assert resolve_sampling(request, DEFAULTS, 10, 64, None) == SamplingParams(20, 0.7, 0.9, ("\n",), None)
    assert resolve_sampling(request, DEFAULTS, 60, 64, None).max_new_tokens == 4
    explicit = CompletionRequest(prompts=("x",), max_tokens=3, temperature=0.0, top_p=0.5, stop=(), seed=1)
    assert resolve_sampling(explicit, DEFAULTS, 10, 64, None) == SamplingParams(3, 0.0, 0.5, (), 1)


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "status", "code"),
    [(64, None, 413, "context_length_exceeded"), (100, 1, 413, "context_length_exceeded"), (60, 5, 422, None)],
)
def test_resolve_sampling_context_errors(prompt_tokens: int, max_tokens: int | None, status: int, code: str) -> None:
    error = resolve_sampling(CompletionRequest(("x",), max_tokens=max_tokens), DEFAULTS, prompt_tokens, 64, None)
    assert isinstance(error, ApiError) and error.status == status
    assert error.code == "context_length_exceeded"


def test_prompt_without_tokens_is_422() -> None:
    error = resolve_sampling(CompletionRequest(("x", "y"), prompt_is_list=True), DEFAULTS, 0, 64, 1)
    assert isinstance(error, ApiError) and (error.status, error.code) == (422, "empty_prompt")
    assert "prompt[1]" in error.message


def test_classify_lengths() -> None:
    assert check_classify_lengths([3, 64], 64, truncate=False, is_list=True) is None
    too_long = check_classify_lengths([3, 65], 64, truncate=False, is_list=True)
    assert isinstance(too_long, ApiError) and too_long.status == 413 and "input[1]" in too_long.message
    assert check_classify_lengths([65], 64, truncate=True, is_list=False) is None
    empty = check_classify_lengths([0], 64, truncate=True, is_list=False)
    assert isinstance(empty, ApiError) and empty.status == 422


def test_prometheus_names_carry_rays_prefix_and_counter_suffix() -> None:
    assert prometheus_name(REQUESTS) == "ray_kubeforge_inference_requests_total"
    assert PROMETHEUS_NAMES["kubeforge_inference_request_latency_seconds"] == (
        "ray_kubeforge_inference_request_latency_seconds"
    )
    assert all(name.startswith("ray_kubeforge_inference_") for name in PROMETHEUS_NAMES.values())
