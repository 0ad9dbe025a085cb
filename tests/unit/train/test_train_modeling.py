"""Model construction: architecture resolution, pretrained weights (kubeforge and Hugging Face), task adaptation,
LoRA, optimizer groups and choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from kubeforge.api.trainingjob import LoraSpec, ModelSpec, PretrainedSpec, TrainingSpec
from kubeforge_trainer.models import ModelConfig, build_model, save_model_dir
from kubeforge_trainer.models.hf import hf_gpt2_config, load_hf_gpt2_dir
from kubeforge_trainer.models.lora import apply_lora, merge_lora, missing_lora_targets
from kubeforge_trainer.train.modeling import (
    adapt_state_dict,
    build_network,
    build_optimizer,
    check_lora_targets,
    load_pretrained_state,
    load_weights,
    optimizer_param_groups,
    plain_model_from_parameters,
    read_pretrained_config,
    resolve_model_config,
)
from kubeforge_trainer.train.plan import DatasetInfo, SpecError
from tokenizers import Tokenizer, models

TINY = {"vocab_size": 64, "n_layers": 2, "n_heads": 2, "d_model": 16, "context_length": 16}


def dataset(task: str = "languageModeling", vocab: int = 64, seq: int = 17) -> DatasetInfo:
    labels = ("neg", "pos") if task == "classification" else ()
    return DatasetInfo("/d", task, seq, vocab, 0, 1, labels, "tokenizer.json", {})


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "a": 2}, unk_token="<pad>")).save(str(path))
    return path


def test_fresh_architecture_comes_from_the_spec_and_vocabulary_from_the_dataset() -> None:
    spec = ModelSpec(task="classification", n_layers=3, n_heads=2, d_model=16, context_length=17, init="xavier")
    config = resolve_model_config("job", spec, dataset("classification", vocab=99), None)
    assert (config.vocab_size, config.n_layers, config.d_model, config.context_length) == (99, 3, 16, 17)
    assert (config.num_labels, config.labels, config.init, config.eos_token_id) == (2, ["neg", "pos"], "xavier", 1)


def test_pretrained_architecture_wins_and_explicit_contradictions_are_errors() -> None:
    pretrained = {**TINY, "vocab_size": 80}
    config = resolve_model_config("job", ModelSpec(dropout=0.1), dataset(), pretrained)
    assert (config.vocab_size, config.n_layers, config.d_model, config.dropout) == (80, 2, 16, 0.1)
    with pytest.raises(SpecError, match=r"TrainingJob/job: spec.model.nLayers: 4 differs from the pretrained"):
        resolve_model_config("job", ModelSpec(n_layers=4), dataset(), pretrained)
    with pytest.raises(SpecError, match=r"spec.model.pretrained: its vocabulary \(80\) is smaller"):
        resolve_model_config("job", ModelSpec(), dataset(vocab=100), pretrained)
    with pytest.raises(SpecError, match=r"context length 16 is shorter"):
        resolve_model_config("job", ModelSpec(), dataset(seq=40), pretrained)


@pytest.mark.parametrize("init", ["gpt2", "xavier", "kaiming"])
def test_each_initialisation_builds_a_working_network(init: str) -> None:
    config = ModelConfig(**TINY, init=init)
    torch.manual_seed(0)
    network = build_network(config, None)
    logits, _ = network(torch.randint(0, 64, (2, 8)))
    assert logits.shape == (2, 8, 64) and torch.isfinite(logits).all()


def test_adapt_state_dict_between_tasks() -> None:
    lm = {"wte.weight": torch.ones(1), "blocks.0.fc1.weight": torch.ones(1)}
    assert set(adapt_state_dict(lm, "languageModeling", "classification", False)) == {
        "gpt.wte.weight",
        "gpt.blocks.0.fc1.weight",
    }
    cls = {"gpt.wte.weight": torch.ones(1), "head.weight": torch.ones(1)}
    assert set(adapt_state_dict(cls, "classification", "languageModeling", False)) == {"wte.weight"}
    assert set(adapt_state_dict(cls, "classification", "classification", True)) == {"gpt.wte.weight", "head.weight"}
    assert set(adapt_state_dict(cls, "classification", "classification", False)) == {"gpt.wte.weight"}


def test_kubeforge_pretrained_language_model_into_a_classifier(tmp_path: Path, tokenizer_file: Path) -> None:
    torch.manual_seed(0)
    source_config = ModelConfig(**TINY)
    source = build_model(source_config)
    save_model_dir(tmp_path / "lm", source, source_config, tokenizer_file, {})
    pretrained = PretrainedSpec(path=str(tmp_path / "lm"))
    fields = read_pretrained_config(pretrained, tmp_path / "lm")
    target = dataset("classification", seq=16)
    target_config = resolve_model_config("job", ModelSpec(task="classification"), target, fields)
    state, task = load_pretrained_state(pretrained, tmp_path / "lm")
    network = build_network(target_config, None, adapt_state_dict(state, task, "classification", False))
    for name, param in source.named_parameters():
        assert torch.equal(network.get_parameter(f"gpt.{name}"), param), name


def test_load_weights_reports_missing_and_mis_shaped_weights() -> None:
    network = build_model(ModelConfig(**TINY))
    state = {n: p.detach().clone() for n, p in network.named_parameters()}
    load_weights(
        network, {k: v for k, v in state.items() if k != "wte.weight"} | {"lm_head.weight": state["wte.weight"]}
    )
    with pytest.raises(ValueError, match=r"do not cover \['blocks.0.fc1.weight'\]"):
        load_weights(network, {k: v for k, v in state.items() if k != "blocks.0.fc1.weight"})
    with pytest.raises(ValueError, match=r"pretrained weight wpe\.weight has shape"):
        load_weights(network, {**state, "wpe.weight": torch.zeros(3, 3)})


def hf_model(tmp_path: Path) -> tuple[Any, Path]:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def test_hugging_face_gpt2_weights_give_the_same_logits(tmp_path: Path) -> None:
    reference, directory = hf_model(tmp_path)
    fields, state, tokenizer = load_hf_gpt2_dir(directory)
    assert fields == {"vocab_size": 64, "n_layers": 2, "n_heads": 2, "d_model": 16, "context_length": 16,
                      "eos_token_id": 50256}  # fmt: skip
    assert tokenizer is None
    ours = build_model(ModelConfig(**fields))
    load_weights(ours, state)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        expected = reference(ids).logits
        logits, _ = ours.eval()(ids)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_hugging_face_configs_other_than_gpt2_are_refused() -> None:
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        hf_gpt2_config({"model_type": "llama"})


def test_lora_trains_adapters_and_head_only_and_merges_back() -> None:
    config = ModelConfig(**TINY, task="classification", num_labels=3)
    lora = LoraSpec(rank=2, alpha=4, target_modules=["qkv", "proj"])
    network = build_network(config, lora)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.endswith(("head.weight", "head.bias")) for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    ids = torch.randint(1, 64, (2, 6))
    expected = network(ids)
    params = {n: p.detach().clone() for n, p in network.named_parameters()}
    plain = plain_model_from_parameters(config, lora, params)
    assert type(plain).__name__ == "GPTForClassification"
    assert plain.gpt.lm_head.weight is plain.gpt.wte.weight  # still tied: exports store it once
    assert torch.allclose(plain(ids), expected, atol=1e-5)
    assert merge_lora(build_model(config)).__class__.__name__ == "GPTForClassification"


def test_lora_targets_must_name_linear_layers() -> None:
    network = build_model(ModelConfig(**TINY))
    assert missing_lora_targets(network, ["qkv", "fc2", "nope", "ln1"]) == ["nope", "ln1"]
    with pytest.raises(ValueError, match="match no linear layer"):
        apply_lora(network, rank=2, alpha=4, dropout=0.0, target_modules=["nope"])
    with pytest.raises(SpecError, match=r"spec.model.lora.targetModules: \['nope'\] match no linear layer"):
        check_lora_targets("job", ModelConfig(**TINY), LoraSpec(target_modules=["nope"]))


def test_weight_decay_applies_to_matrices_only() -> None:
    network = build_model(ModelConfig(**TINY))
    decay, no_decay = optimizer_param_groups(network, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(network.parameters()))


@pytest.mark.parametrize(
    ("name", "expected"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_optimizer_choice(name: str, expected: type) -> None:
    training = TrainingSpec(max_steps=1, optimizer=name, learning_rate=0.5, momentum=0.8, betas=[0.8, 0.9])
    groups = optimizer_param_groups(build_model(ModelConfig(**TINY)), 0.1)
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
