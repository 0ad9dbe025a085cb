"""The network a TrainingJob trains: architecture from the spec or a pretrained model, LoRA, optimizer, and the
consolidation of (ZeRO-partitioned) weights into one plain model for checkpoints and export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from kubeforge.api.trainingjob import LoraSpec, ModelSpec, PretrainedSpec, TrainingSpec
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from .. import storage
from ..models import ModelConfig, build_model
from ..models.hf import hf_gpt2_config, load_hf_gpt2_dir
from ..models.lora import apply_lora, merge_lora, missing_lora_targets
from .plan import CLASSIFICATION, LANGUAGE_MODELING, DatasetInfo, spec_error

log = logging.getLogger(__name__)

# ModelSpec fields that describe the architecture (wire names), which a pretrained model fixes.
ARCHITECTURE_FIELDS = {
    "n_layers": "nLayers",
    "n_heads": "nHeads",
    "d_model": "dModel",
    "context_length": "contextLength",
}


def pretrained_local_dir(pretrained: PretrainedSpec, cache_dir: str | Path) -> Path:
    """A local directory with the pretrained model (downloaded into cache_dir when on an object store)."""
    return storage.materialize_dir(pretrained.path, cache_dir)


def read_pretrained_config(pretrained: PretrainedSpec, directory: Path) -> dict[str, Any]:
    """ModelConfig fields of a pretrained model directory (kubeforge export/checkpoint or Hugging Face GPT-2)."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: config.json is missing")
    raw = json.loads(config_file.read_text())
    if pretrained.format == "huggingface":
        return hf_gpt2_config(raw)
    return ModelConfig.from_dict(raw).to_dict()


def resolve_model_config(
    resource_name: str, model: ModelSpec, dataset: DatasetInfo, pretrained: dict[str, Any] | None
) -> ModelConfig:
    """The ModelConfig to train: the spec's architecture, or the pretrained one (explicit spec fields that
    contradict it are an error); vocabulary, labels and special tokens come from the dataset."""
    num_labels = 0
    if model.task == CLASSIFICATION:
        num_labels = model.num_labels or len(dataset.labels)
    labels = list(dataset.labels) if model.task == CLASSIFICATION else []
    common = {
        "task": model.task,
        "dropout": model.dropout,
        "init": model.init,
        "num_labels": num_labels,
        "labels": labels,
        "pad_token_id": dataset.pad_token_id,
        "eos_token_id": dataset.eos_token_id,
    }
    if pretrained is None:
        arch = {name: getattr(model, name) for name in ARCHITECTURE_FIELDS}
        return ModelConfig(vocab_size=dataset.vocab_size, **arch, **common)
    for name, wire in ARCHITECTURE_FIELDS.items():
        if name in model.model_fields_set and getattr(model, name) != pretrained[name]:
            raise spec_error(
                resource_name,
                f"spec.model.{wire}",
                f"{getattr(model, name)} differs from the pretrained model's {pretrained[name]} (leave it unset)",
            )
    if pretrained["vocab_size"] < dataset.vocab_size:
        raise spec_error(
            resource_name,
            "spec.model.pretrained",
            f"its vocabulary ({pretrained['vocab_size']}) is smaller than the dataset's ({dataset.vocab_size}): "
            "tokenize the data with the pretrained model's tokenizer",
        )
    needed = dataset.sequence_length - 1 if model.task == LANGUAGE_MODELING else dataset.sequence_length
    if pretrained["context_length"] < needed:
        raise spec_error(
            resource_name,
            "spec.model.pretrained",
            f"its context length {pretrained['context_length']} is shorter than the dataset's sequences ({needed})",
        )
    arch = {name: pretrained[name] for name in ARCHITECTURE_FIELDS}
    return ModelConfig(vocab_size=pretrained["vocab_size"], **arch, **common)


def same_vocabulary(tokenizer_a: str | Path, tokenizer_b: str | Path) -> bool:
    """Whether two tokenizers.json files map the same strings to the same ids."""
    return Tokenizer.from_file(str(tokenizer_a)).get_vocab() == Tokenizer.from_file(str(tokenizer_b)).get_vocab()


def load_pretrained_state(pretrained: PretrainedSpec, directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in kubeforge names, task the weights were trained for) of a local pretrained model."""
    if pretrained.format == "huggingface":
        _, state, _ = load_hf_gpt2_dir(directory)
        return state, LANGUAGE_MODELING
    config = ModelConfig.from_dict(json.loads((directory / "config.json").read_text()))
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: model.safetensors is missing")
    return load_file(str(weights)), config.task


def adapt_state_dict(
    state: dict[str, torch.Tensor], source_task: str, target_task: str, same_labels: bool
) -> dict[str, torch.Tensor]:
    """Rename pretrained weights for the target network: a language model's decoder becomes a classifier's `gpt.`
    body (with a fresh head) and back; a classification head is kept only for the same labels."""
    if source_task == target_task:
        if target_task == CLASSIFICATION and not same_labels:
            return {k: v for k, v in state.items() if not k.startswith("head.")}
        return dict(state)
    if target_task == CLASSIFICATION:
        return {f"gpt.{k}": v for k, v in state.items()}
    return {k.removeprefix("gpt."): v for k, v in state.items() if k.startswith("gpt.")}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy state into the model; every parameter must be covered except a classifier's head (tied weights may
    come under either name). Raises ValueError naming what is missing or mis-shaped."""
    params = dict(model.named_parameters(remove_duplicate=False))
    covered: set[int] = set()
    for name, tensor in state.items():
        param = params.get(name)
        if param is None:
            continue
        if tuple(param.shape) != tuple(tensor.shape):
            shapes = f"{tuple(tensor.shape)}, the model {tuple(param.shape)}"
            raise ValueError(f"pretrained weight {name} has shape {shapes}")
        with torch.no_grad():
            param.copy_(tensor.to(param.dtype))
        covered.add(id(param))
    missing = sorted({n for n, p in params.items() if id(p) not in covered and not n.startswith("head.")})
    if missing:
        raise ValueError(f"the pretrained weights do not cover {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def build_network(
    config: ModelConfig, lora: LoraSpec | None, pretrained_state: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """The initialised network for config, with pretrained weights loaded, wrapped with LoRA when lora is set."""
    network = build_model(config)
    if pretrained_state is not None:
        load_weights(network, pretrained_state)
    if lora is None:
        return network
    return apply_lora(
        network,
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
        trainable_modules=["head"] if config.task == CLASSIFICATION else [],
    )


def check_lora_targets(resource_name: str, config: ModelConfig, lora: LoraSpec | None) -> None:
    """A SpecError when a LoRA target names no linear layer of the network."""
    if lora is None:
        return
    with torch.device("meta"):
        network = build_model(config)
    missing = missing_lora_targets(network, lora.target_modules)
    if missing:
        raise spec_error(
            resource_name, "spec.model.lora.targetModules", f"{missing} match no linear layer (e.g. qkv, proj, fc1)"
        )


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices and embeddings decay, biases and LayerNorm weights do not."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    groups: list[dict[str, Any]], training: TrainingSpec, *, use_gpu: bool, offload_optimizer: bool
) -> torch.optim.Optimizer:
    """spec.training's optimizer: AdamW, Adam (coupled L2 decay) or SGD with momentum; DeepSpeed's CPU Adam when
    the optimizer state is offloaded, torch's fused kernels on GPUs."""
    lr, betas = training.learning_rate, tuple(training.betas)
    if training.optimizer in ("adamw", "adam"):
        if offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, adamw_mode=training.optimizer == "adamw")
        cls = torch.optim.AdamW if training.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=lr, betas=betas, eps=1e-8, fused=use_gpu)
    return torch.optim.SGD(groups, lr=lr, momentum=training.momentum)


def gather_full_parameters(module: nn.Module, zero_stage: int, is_rank0: bool) -> dict[str, torch.Tensor] | None:
    """Every parameter of a DeepSpeed-wrapped module as a full fp32 CPU tensor on rank 0 (None elsewhere).

    A collective: all ranks must call it. Trainable parameters come from the optimizer's fp32 master copy where
    there is one (bf16/fp16 and ZeRO partitions), frozen ones from the module, gathered under ZeRO-3.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    gathered: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:
            if zero_stage == 3 and hasattr(param, "ds_id"):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    full = param.data.detach().clone()
            else:
                full = param.data.detach()
        if is_rank0:
            gathered[name] = full.float().cpu().clone()
    return gathered if is_rank0 else None


def plain_model_from_parameters(
    config: ModelConfig, lora: LoraSpec | None, parameters: dict[str, torch.Tensor]
) -> nn.Module:
    """A CPU copy of the trained network with these parameters, LoRA merged in: what checkpoints and exports hold."""
    network = build_network(config, lora)
    load_weights(network, parameters)
    return merge_lora(network).eval()
