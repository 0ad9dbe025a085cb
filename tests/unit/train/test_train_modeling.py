"""The transformers model layer: architectures from a spec, pretrained Hugging Face directories, vocabulary
resizing, task heads, LoRA/QLoRA, the checkpoint/export format, optimizer groups and choices. No downloads: every
model is a tiny random-weight one built from a config and saved with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from kubeforge.api.trainingjob import LoraSpec, ModelSpec, TrainingSpec, legacy_model_message
from kubeforge_trainer.models import hf_tokenizer
from kubeforge_trainer.models.build import build_config, build_model
from kubeforge_trainer.models.lora import default_target_modules, missing_lora_targets
from kubeforge_trainer.models.pretrained import read_config
from kubeforge_trainer.train.modeling import (
    ADAPTER_DIR,
    ModelPlan,
    build_network,
    build_optimizer,
    check_lora,
    dataset_tokenizer,
    gather_full_parameters,
    load_parameters,
    optimizer_param_groups,
    resolve_model,
    save_checkpoint_model,
    tokenizer_extends,
)
from kubeforge_trainer.train.plan import DatasetInfo, SpecError
from pydantic import ValidationError
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM

TINY = {"architecture": "llama", "hidden_size": 16, "layers": 2, "heads": 4, "kv_heads": 2, "context_length": 16}
VOCAB = 64


def dataset(task: str = "languageModeling", vocab: int = VOCAB, seq: int = 17) -> DatasetInfo:
    labels = ("neg", "pos") if task == "classification" else ()
    return DatasetInfo("/d", task, seq, vocab, 0, 1, labels, "tokenizer.json", {})


def plan_for(model: ModelSpec, data: DatasetInfo | None = None, pretrained: Path | None = None) -> ModelPlan:
    config = read_config(pretrained) if pretrained else None
    return resolve_model("job", model, data or dataset(model.task), config)


def word_tokenizer(path: Path, words: int = VOCAB) -> Path:
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, words)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<pad>")).save(str(path))
    return path


def saved_model(tmp_path: Path, architecture: str, vocab: int = VOCAB, **sizes: Any) -> Path:
    """A tiny random-weight model saved with save_pretrained (what a downloaded base model looks like)."""
    torch.manual_seed(1)
    fields = {"hidden_size": 16, "layers": 2, "heads": 4, "context_length": 32, **sizes}
    config = build_config(
        architecture, vocab_size=vocab, special_tokens={"pad_token_id": 0, "eos_token_id": 1}, **fields
    )
    directory = tmp_path / f"base-{architecture}"
    build_model(config).save_pretrained(directory)
    return directory


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    ("architecture", "extra"),
    [("llama", {"kv_heads": 2, "rope_theta": 5e5}), ("qwen2", {"kv_heads": 2}), ("mistral", {}), ("gpt2", {})],
)
def test_architecture_and_sizes_come_from_the_spec_and_vocabulary_from_the_dataset(
    architecture: str, extra: dict[str, Any]
) -> None:
    spec = ModelSpec(
        architecture=architecture, hidden_size=32, layers=3, heads=4, intermediate_size=48, context_length=24, **extra
    )
    plan = plan_for(spec, dataset(vocab=50, seq=17))
    config = plan.hf_config()
    assert (plan.architecture, config.vocab_size, config.hidden_size) == (architecture, 50, 32)
    assert (config.num_hidden_layers, config.num_attention_heads, config.max_position_embeddings) == (3, 4, 24)
    assert (config.pad_token_id, config.eos_token_id) == (0, 1)
    network = build_network(plan, spec)
    mlp_widths = {
        getattr(m, "out_features", None) or m.nf for n, m in network.named_modules() if n.endswith(("up_proj", "c_fc"))
    }
    assert 48 in mlp_widths
    if "kv_heads" in extra:
        k_proj = next(m for n, m in network.named_modules() if n.endswith("k_proj"))
        assert k_proj.out_features == 2 * 32 // 4  # two KV heads of width 8
    if "rope_theta" in extra:
        assert config.rope_parameters["rope_theta"] == 5e5
    ids = torch.randint(0, 50, (2, 16))
    assert logits_of(network, ids).shape == (2, 16, 50)
    n = sum(p.numel() for p in network.parameters())
    assert 6 * n <= plan.flops_per_token <= 6 * n + 12 * 3 * 32 * 16


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"architecture": "gpt2", "kv_heads": 2}, r"spec.model.kvHeads: architecture gpt2 has no grouped-query"),
        ({"architecture": "gpt2", "rope_theta": 1e4}, r"spec.model.ropeTheta/ropeScaling: architecture gpt2"),
        ({"architecture": "not-a-model"}, r"spec.model.architecture: 'not-a-model' is not a transformers"),
    ],
)
def test_sizes_an_architecture_cannot_take_are_spec_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=rf"^TrainingJob/job: {message}"):
        plan_for(ModelSpec(**{**TINY, "kv_heads": None, **spec}))


def test_old_manifests_get_a_one_line_migration_message() -> None:
    for old in ({"nLayers": 2, "dModel": 64}, {"pretrained": {"path": "/m", "format": "huggingface"}}):
        message = legacy_model_message(old)
        assert message and "\n" not in message and message.startswith("spec.model.")
        with pytest.raises(ValidationError, match=r"spec\.model\."):
            ModelSpec.model_validate(old)
    assert "nLayers -> layers" in legacy_model_message({"nLayers": 2})
    assert legacy_model_message({"layers": 2}) is None


@pytest.mark.parametrize("init", ["gpt2", "xavier", "kaiming"])
def test_each_initialisation_builds_a_working_network(init: str) -> None:
    spec = ModelSpec(**TINY, init=init)
    network = build_network(plan_for(spec), spec)
    q = next(m for n, m in network.named_modules() if n.endswith("q_proj"))
    std = float(q.weight.std())
    expected = {"gpt2": 0.02, "xavier": (6 / 32) ** 0.5 / 3**0.5, "kaiming": (2 / 16) ** 0.5}[init]
    assert abs(std - expected) / expected < 0.3
    out = logits_of(network, torch.randint(0, VOCAB, (2, 8)))
    assert torch.isfinite(out).all()


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        spec = ModelSpec(**TINY, gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        network = build_network(plan_for(spec), spec)
        assert network.is_gradient_checkpointing is checkpointing
        ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
        network(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append(network.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_pretrained_directory_fixes_the_architecture_and_loads_unchanged(tmp_path: Path) -> None:
    base = saved_model(tmp_path, "qwen2", kv_heads=2)
    spec = ModelSpec(pretrained={"uri": str(base)})
    plan = plan_for(spec, pretrained=base)
    assert plan.architecture == "qwen2" and plan.pretrained_uri == str(base) and plan.base_vocab_size is None
    network = build_network(plan, spec, pretrained_dir=base)
    ids = torch.randint(0, VOCAB, (2, 12))
    reference = AutoModelForCausalLM.from_pretrained(base)
    torch.testing.assert_close(logits_of(network, ids), logits_of(reference, ids))
    with pytest.raises(SpecError, match=r"spec.model.layers: is fixed by spec.model.pretrained"):
        plan_for(ModelSpec(layers=3, pretrained={"uri": str(base)}), pretrained=base)
    # The defaulted form the driver gets (every field set to its default) is not a clash.
    defaulted = ModelSpec.model_validate(spec.model_dump(by_alias=True))
    assert "architecture" in defaulted.model_fields_set
    assert plan_for(defaulted, pretrained=base).architecture == "qwen2"
    with pytest.raises(SpecError, match=r"spec.model.pretrained: its context length 32 is shorter"):
        plan_for(spec, dataset(seq=40), pretrained=base)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_larger_vocabulary_resizes_embeddings_and_keeps_old_tokens_logits(tmp_path: Path, architecture: str) -> None:
    base = saved_model(tmp_path, architecture)
    spec = ModelSpec(pretrained={"uri": str(base)})
    plan = plan_for(spec, dataset(vocab=VOCAB + 16), pretrained=base)
    assert plan.base_vocab_size == VOCAB and plan.config["vocab_size"] == VOCAB + 16
    network = build_network(plan, spec, pretrained_dir=base)
    reference = AutoModelForCausalLM.from_pretrained(base)
    embeddings = network.get_input_embeddings().weight
    assert embeddings.shape[0] == VOCAB + 16
    # Old ids keep their rows; new rows start at the mean of the old ones.
    torch.testing.assert_close(embeddings[:VOCAB], reference.get_input_embeddings().weight)
    torch.testing.assert_close(embeddings[VOCAB:], embeddings[:VOCAB].mean(0).expand(16, -1))
    ids = torch.randint(0, VOCAB, (2, 12))
    new, old = logits_of(network, ids), logits_of(reference, ids)
    torch.testing.assert_close(new[..., :VOCAB], old)  # step 0: the old tokens' logits are unchanged
    # A new token's logit is the mean of the old ones' (the output rows are the mean of the old rows).
    torch.testing.assert_close(new[..., VOCAB:], old.mean(-1, keepdim=True).expand(-1, -1, 16), rtol=1e-4, atol=1e-4)


def test_an_extended_tokenizer_keeps_old_ids_another_one_does_not(tmp_path: Path) -> None:
    base = word_tokenizer(tmp_path / "base.json", 20)
    assert tokenizer_extends(base, word_tokenizer(tmp_path / "extended.json", 30))
    other = tmp_path / "other.json"
    Tokenizer(models.WordLevel({"<pad>": 0, "w3": 2, "w2": 3}, unk_token="<pad>")).save(str(other))
    assert not tokenizer_extends(base, other)


def test_language_model_into_a_classifier_keeps_the_body(tmp_path: Path) -> None:
    base = saved_model(tmp_path, "llama")
    spec = ModelSpec(task="classification", pretrained={"uri": str(base)})
    plan = plan_for(spec, dataset("classification"), pretrained=base)
    network = build_network(plan, spec, pretrained_dir=base)
    reference = AutoModelForCausalLM.from_pretrained(base)
    torch.testing.assert_close(
        network.model.layers[1].mlp.down_proj.weight, reference.model.layers[1].mlp.down_proj.weight
    )
    assert network.config.id2label == {0: "neg", 1: "pos"}
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert network(input_ids=ids, attention_mask=(ids != 0).long()).logits.shape == (2, 2)


@pytest.mark.parametrize("task", ["languageModeling", "classification"])
def test_lora_trains_adapters_only_and_merges_back(tmp_path: Path, task: str) -> None:
    base = saved_model(tmp_path, "llama")
    spec = ModelSpec(task=task, pretrained={"uri": str(base)}, lora={"rank": 2, "alpha": 4})
    plan = plan_for(spec, dataset(task), pretrained=base)
    network = build_network(plan, spec, pretrained_dir=base)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and any("v_proj.lora_B" in n for n in trainable)
    assert any(".score." in n for n in trainable) == (task == "classification")
    with torch.no_grad():
        for n, p in network.named_parameters():
            if "lora_B" in n:
                p.normal_()  # LoRA B starts at zero: make the adapters matter
    ids = torch.randint(1, VOCAB, (2, 10))
    adapted = network(input_ids=ids).logits.detach()
    merged = network.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits.detach(), adapted, rtol=1e-4, atol=1e-4)


def test_default_lora_targets_follow_the_architecture_and_bad_ones_are_spec_errors() -> None:
    assert default_target_modules("llama") == ["q_proj", "v_proj"] and default_target_modules("gpt2") == ["c_attn"]
    spec = ModelSpec(**TINY)
    plan = plan_for(spec)
    network = build_network(plan, spec)
    assert missing_lora_targets(network, ["q_proj", "nope"]) == ["nope"]
    with pytest.raises(SpecError, match=r"spec.model.lora.targetModules: \['nope'\] match no linear layer of llama"):
        check_lora("job", plan, LoraSpec(target_modules=["nope"]), use_gpu=False)
    check_lora("job", plan, LoraSpec(), use_gpu=False)


def test_qlora_on_cpu_is_refused_in_one_line_naming_the_field() -> None:
    plan = plan_for(ModelSpec(**TINY))
    with pytest.raises(SpecError, match=r"^TrainingJob/job: spec.model.lora.quantization: nf4: .*needs CUDA GPUs") as e:
        check_lora("job", plan, LoraSpec(quantization="nf4"), use_gpu=False)
    assert "\n" not in str(e.value)


def test_checkpoint_model_is_a_plain_hugging_face_directory(tmp_path: Path) -> None:
    spec = ModelSpec(**TINY)
    plan = plan_for(spec)
    network = build_network(plan, spec)
    parameters = {n: p.detach().clone() for n, p in network.named_parameters()}
    tokenizer = hf_tokenizer(word_tokenizer(tmp_path / "tok.json"), {"pad_token_id": 0, "eos_token_id": 1})
    out = tmp_path / "ckpt"
    save_checkpoint_model(out, plan, spec, parameters, tokenizer=tokenizer, info={"version": "v1"})
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "kubeforge.json"} <= names
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(1, VOCAB, (1, 6))
    torch.testing.assert_close(logits_of(loaded, ids), logits_of(network, ids))
    generated = loaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 10)
    assert json.loads((out / "kubeforge.json").read_text()) == {"version": "v1"}
    with pytest.raises(ValueError, match="do not cover"):
        load_parameters(build_network(plan, spec), {k: v for k, v in parameters.items() if "layers.1" not in k})


def test_lora_checkpoint_has_merged_weights_and_a_peft_adapter(tmp_path: Path) -> None:
    from peft import PeftModel

    base = saved_model(tmp_path, "llama")
    spec = ModelSpec(pretrained={"uri": str(base)}, lora={"rank": 2, "alpha": 4})
    plan = plan_for(spec, pretrained=base)
    network = build_network(plan, spec, pretrained_dir=base)
    with torch.no_grad():
        for n, p in network.named_parameters():
            if "lora_B" in n:
                p.normal_()
    parameters = {n: p.detach().clone() for n, p in network.named_parameters()}
    out = tmp_path / "ckpt"
    save_checkpoint_model(out, plan, spec, parameters, tokenizer=None, info={"version": "v1"})
    ids = torch.randint(1, VOCAB, (1, 6))
    expected = logits_of(network, ids)
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out), ids), expected)
    adapter = out / ADAPTER_DIR
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert json.loads((adapter / "kubeforge.json").read_text())["baseModel"] == str(base)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    torch.testing.assert_close(logits_of(with_adapter, ids), expected)


def test_the_datasets_save_pretrained_tokenizer_keeps_its_chat_template(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    word_tokenizer(data / "tokenizer.json")
    plain = dataset_tokenizer(str(data), "tokenizer.json", {"pad_token_id": 0, "eos_token_id": 1}, tmp_path / "a")
    assert (plain.pad_token, plain.eos_token, plain.chat_template) == ("<pad>", "<eos>", None)
    template = "{% for m in messages %}{{ m['content'] }}<eos>{% endfor %}"
    hf_tokenizer(data / "tokenizer.json", {"eos_token_id": 1, "pad_token_id": 0}).save_pretrained(data)
    (data / "chat_template.jinja").write_text(template)
    from_data = dataset_tokenizer(str(data), "tokenizer.json", {}, tmp_path / "b")
    assert from_data.chat_template == template and from_data.eos_token == "<eos>"
    out = tmp_path / "export"
    from_data.save_pretrained(out)
    assert (out / "chat_template.jinja").read_text() == template


def test_gathered_parameters_without_deepspeed_are_the_module_own() -> None:
    spec = ModelSpec(**TINY)
    network = build_network(plan_for(spec), spec)
    gathered = gather_full_parameters(network, 0, is_rank0=True)
    assert gathered is not None and gathered.keys() == dict(network.named_parameters()).keys()
    assert gather_full_parameters(network, 0, is_rank0=False) is None


def test_weight_decay_applies_to_matrices_only() -> None:
    network = build_network(plan_for(ModelSpec(**TINY)), ModelSpec(**TINY))
    decay, no_decay = optimizer_param_groups(network, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(network.parameters()))


@pytest.mark.parametrize(
    ("name", "expected"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_optimizer_choice(name: str, expected: type) -> None:
    training = TrainingSpec(max_steps=1, optimizer=name, learning_rate=0.5, momentum=0.8, betas=[0.8, 0.9])
    groups = optimizer_param_groups(build_network(plan_for(ModelSpec(**TINY)), ModelSpec(**TINY)), 0.1)
    optimizer = build_optimizer(groups, training, use_gpu=False, offload_optimizer=False)
    assert type(optimizer) is expected
    assert optimizer.param_groups[0]["lr"] == 0.5
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.8
    else:
        assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)


def test_compiled_language_model_loss_matches_the_eager_one_and_its_gradient() -> None:
    from kubeforge_trainer.train.worker import _compiled_lm_loss, lm_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.bfloat16)
    targets = torch.randint(0, 11, (2, 5))
    for reduction in ("mean", "sum"):
        eager_in, compiled_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        eager, compiled = lm_loss(eager_in, targets, reduction), _compiled_lm_loss()(compiled_in, targets, reduction)
        eager.backward()
        compiled.backward()
        assert compiled.dtype == torch.float32
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(compiled_in.grad, eager_in.grad)
    assert _compiled_lm_loss() is _compiled_lm_loss()
