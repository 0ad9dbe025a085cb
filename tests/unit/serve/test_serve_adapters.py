"""LoRA adapters in the continuous batch (peft, mixed-adapter batches) and their settings (no Ray)."""

from __future__ import annotations

import pytest
import torch
from kubeforge_trainer.serve.engine import ContinuousBatcher, GenerationTask, SamplingParams, generate
from kubeforge_trainer.serve.runner import _apply_adapters
from kubeforge_trainer.serve.settings import AdapterRef, parse_app_args
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB, PAD = 40, 0


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights: greedy choices far apart, so padding noise cannot flip them
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5)
    return model.eval()


def save_adapter(path, seed: int) -> str:
    base = base_model()
    torch.manual_seed(seed)  # after the base, which seeds itself
    config = LoraConfig(r=8, lora_alpha=256, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(path))
    return str(path)


@torch.inference_mode()
def greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def task(prompt: list[int], adapter: str | None) -> GenerationTask:
    return GenerationTask(0, prompt, SamplingParams(6, temperature=0.0), adapter=adapter)


def test_a_batch_mixes_adapters_and_the_base_and_each_row_gets_its_own(tmp_path) -> None:
    paths = {"a": save_adapter(tmp_path / "a", 1), "b": save_adapter(tmp_path / "b", 2)}
    engine = ContinuousBatcher(base_model(), frozenset(), PAD, str, torch.Generator().manual_seed(0))
    engine.change_model(lambda m: _apply_adapters(m, [], {n: p for n, p in paths.items()}))
    prompt = [3, 4, 5, 6]
    tasks = [task(prompt, None), task(prompt, "a"), task(prompt, "b"), task([7, 8], "a")]
    generate(engine, tasks)
    references = {}
    for name, path in paths.items():
        references[name] = PeftModel.from_pretrained(base_model(), path).eval()
    assert tasks[0].token_ids == greedy(base_model(), prompt, 6)
    assert tasks[1].token_ids == greedy(references["a"], prompt, 6)
    assert tasks[2].token_ids == greedy(references["b"], prompt, 6)
    assert tasks[3].token_ids == greedy(references["a"], [7, 8], 6)
    assert len({tuple(t.token_ids) for t in tasks[:3]}) == 3  # the adapters really change the answer

    # Dropping every adapter leaves the plain base model serving as before.
    engine.change_model(lambda m: _apply_adapters(m, ["a", "b"], {}))
    assert not hasattr(engine.model, "peft_config")
    again = task(prompt, None)
    generate(engine, [again])
    assert again.token_ids == tasks[0].token_ids


def resource(**spec: object) -> dict:
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec}


def test_adapter_settings() -> None:
    args = {"resource": resource(modelUri="/base", adapters=[{"name": "fr", "uri": "/fr"}]), "modelVersion": "v1"}
    assert parse_app_args(args, read_version=str).adapters == (AdapterRef("fr", "/fr"),)
    resolved = {**args, "adapters": [{"name": "fr", "uri": "s3://b/fr", "version": "7"}]}
    assert parse_app_args(resolved, read_version=str).adapters == (AdapterRef("fr", "s3://b/fr", "7"),)
    by_ref = {"resource": resource(modelUri="/b", adapters=[{"name": "x", "modelRef": {"name": "job"}}])}
    with pytest.raises(ValueError, match=r"spec\.adapters x: "):
        parse_app_args({**by_ref, "modelVersion": "v1"}, read_version=str)
    clash = {"resource": resource(modelUri="/b", adapters=[{"name": "v1", "uri": "/a"}]), "modelVersion": "v1"}
    with pytest.raises(ValueError, match="already the deployment's or a version's name"):
        parse_app_args(clash, read_version=str)
    int8 = {"resource": resource(modelUri="/b", quantization="int8", adapters=[{"name": "a", "uri": "/a"}])}
    with pytest.raises(ValueError, match="int8"):
        parse_app_args({**int8, "modelVersion": "v1"}, read_version=str)


def test_the_operators_serve_config_carries_adapters_in_user_config_and_keeps_the_args() -> None:
    """Serve hashes an application's args into its code version (a new one restarts the replicas): changing the
    adapters, batching or generation defaults must change only the deployment's user_config override."""
    import yaml
    from kubeforge.api import ModelDeployment
    from kubeforge.builders.rayservice import ResolvedAdapter, ResolvedModel, build_rayservice
    from kubeforge.config import OperatorConfig
    from ray.serve.schema import ServeDeploySchema

    def serve_config(**spec: object) -> dict:
        body = resource(modelUri="s3://m/base", **spec)
        body["metadata"]["generation"] = 1 + len(spec)  # a spec change bumps the generation
        typed = ModelDeployment.model_validate(body)
        rayservice = build_rayservice(typed, OperatorConfig(), model=ResolvedModel("s3://m/base", "v1"))
        config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(config)  # what Serve checks before applying it
        return config["applications"][0]

    plain = serve_config()
    tuned = serve_config(adapters=[{"name": "fr", "uri": "s3://m/fr"}], batching={"maxBatchSize": 4})
    assert tuned["args"] == plain["args"]
    assert "adapters" not in tuned["args"]["resource"]["spec"]
    (deployment,) = tuned["deployments"]
    assert deployment["name"] == "server"
    assert deployment["user_config"]["adapters"] == [{"name": "fr", "uri": "s3://m/fr", "version": ""}]
    assert deployment["user_config"]["batching"]["maxBatchSize"] == 4
    # The operator passes adapters it resolved from modelRefs (with their versions) explicitly.
    resolved = build_rayservice(
        ModelDeployment.model_validate(
            resource(modelUri="s3://m/base", adapters=[{"name": "x", "modelRef": {"name": "j"}}])
        ),
        OperatorConfig(),
        model=ResolvedModel("s3://m/base", "v1"),
        adapters=[ResolvedAdapter("x", "s3://jobs/j/adapter", "7")],
    )
    app = yaml.safe_load(resolved["spec"]["serveConfigV2"])["applications"][0]
    assert app["deployments"][0]["user_config"]["adapters"] == [
        {"name": "x", "uri": "s3://jobs/j/adapter", "version": "7"}
    ]


def test_api_keys_reach_every_ray_container_from_the_secret_only() -> None:
    from kubeforge.api import ModelDeployment
    from kubeforge.builders.rayservice import ResolvedModel, build_rayservice
    from kubeforge.config import OperatorConfig

    body = resource(modelUri="s3://m", auth={"apiKeySecret": "keys"}, replicas={"min": 1, "max": 2})
    rayservice = build_rayservice(ModelDeployment.model_validate(body), OperatorConfig(), model=ResolvedModel("s3://m"))
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    assert len(containers) >= 2
    for container in containers:
        (env,) = [e for e in container["env"] if e["name"] == "KUBEFORGE_API_KEYS"]
        assert env["valueFrom"] == {"secretKeyRef": {"name": "keys", "key": "apiKeys"}}
    plain = build_rayservice(
        ModelDeployment.model_validate(resource(modelUri="s3://m")), OperatorConfig(), model=ResolvedModel("s3://m")
    )
    assert "KUBEFORGE_API_KEYS" not in str(plain)


def test_repeated_adapter_names_are_refused_naming_them() -> None:
    from kubeforge.validate import validate_document

    body = resource(modelUri="/b", adapters=[{"name": "fr", "uri": "/a"}, {"name": "fr", "uri": "/b"}])
    body["metadata"]["namespace"] = "ml"
    problems = [str(p) for p in validate_document("md.yaml", body)[1]]
    assert len(problems) == 1 and "repeated: fr" in problems[0], problems
