"""Causal LMs (and sequence classifiers) of any transformers architecture, built from scratch from a spec's sizes."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

LANGUAGE_MODELING = "languageModeling"
CLASSIFICATION = "classification"
INITS = ("gpt2", "xavier", "kaiming")
# Residual output projections of the common architectures: GPT-2's init scales them by 1/sqrt(2 * layers).
RESIDUAL_PROJECTIONS = ("o_proj", "down_proj", "c_proj", "out_proj", "dense_4h_to_h", "fc2", "wo")


def _config_fields(config_class: type) -> set[str]:
    """Keyword names a transformers config class accepts (its own, plus attribute_map aliases)."""
    fields = set(inspect.signature(config_class.__init__).parameters)
    fields |= set(getattr(config_class, "__annotations__", {}))
    fields |= set(getattr(config_class, "attribute_map", {}))
    return fields


def build_config(
    architecture: str,
    *,
    vocab_size: int,
    hidden_size: int,
    layers: int,
    heads: int,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    context_length: int,
    rope_theta: float | None = None,
    rope_scaling: dict[str, Any] | None = None,
    dropout: float = 0.0,
    special_tokens: dict[str, int | None] | None = None,
) -> Any:
    """A transformers PretrainedConfig for architecture with these sizes. Raises ValueError naming the spec field
    (wire name) an architecture cannot take."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if architecture not in CONFIG_MAPPING:
        raise ValueError(f"architecture: {architecture!r} is not a transformers model_type")
    fields = _config_fields(CONFIG_MAPPING[architecture])
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": context_length,
    }
    inner = intermediate_size or 4 * hidden_size
    if "intermediate_size" in fields:
        kwargs["intermediate_size"] = inner
    elif "n_inner" in fields:  # GPT-2
        kwargs["n_inner"] = inner
    elif intermediate_size is not None:
        raise ValueError(f"intermediateSize: architecture {architecture} has no MLP width setting")
    if kv_heads is not None and kv_heads != heads:
        if "num_key_value_heads" not in fields:
            raise ValueError(f"kvHeads: architecture {architecture} has no grouped-query attention")
        kwargs["num_key_value_heads"] = kv_heads
    elif "num_key_value_heads" in fields:
        kwargs["num_key_value_heads"] = heads
    if rope_theta is not None or rope_scaling:
        if "rope_parameters" not in fields:
            raise ValueError(f"ropeTheta/ropeScaling: architecture {architecture} has no rotary embeddings")
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}
        rope.update(rope_scaling or {})
        if rope_theta is not None:
            rope["rope_theta"] = rope_theta
        kwargs["rope_parameters"] = rope
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if name in fields:
            kwargs[name] = dropout
    for name, value in (special_tokens or {}).items():
        kwargs[name] = value
    return AutoConfig.for_model(architecture, **kwargs)


def build_model(
    config: Any,
    *,
    task: str = LANGUAGE_MODELING,
    init: str = "gpt2",
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """A randomly initialised AutoModelForCausalLM (or ...ForSequenceClassification, with config.num_labels) for
    the config, initialised with init (gpt2 | xavier | kaiming)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == CLASSIFICATION else AutoModelForCausalLM
    model = auto.from_config(config, attn_implementation=attn_implementation)
    init_weights(model, init, config.num_hidden_layers)
    return model


def init_weights(model: nn.Module, init: str, layers: int) -> None:
    """GPT-2 scaled normal, Xavier or Kaiming initialisation of linear (and GPT-2 Conv1D) and embedding weights;
    norms keep the architecture's own init (ones)."""
    from transformers.pytorch_utils import Conv1D

    if init not in INITS:
        raise ValueError(f"init {init!r} is not one of {INITS}")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                weight = module.weight
                if init == "xavier":
                    nn.init.xavier_uniform_(weight)
                elif init == "kaiming":
                    nn.init.kaiming_normal_(weight, nonlinearity="relu")
                else:
                    std = 0.02
                    if name.rsplit(".", 1)[-1] in RESIDUAL_PROJECTIONS:
                        std = 0.02 / math.sqrt(2 * layers)
                    nn.init.normal_(weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()  # the output layer follows the re-initialised input embedding


def context_length(config: Any) -> int | None:
    """Longest sequence a config's positions cover (max_position_embeddings, or GPT-2's n_positions)."""
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


def flops_per_token(model: nn.Module, config: Any, sequence_length: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM-style: 6N + 12·L·d·T, N without position embeddings."""
    n = 0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen or name.endswith(("wpe.weight", "embed_positions.weight")):
            continue
        seen.add(id(param))
        n += getattr(param, "ds_numel", param.numel())
    return float(6 * n + 12 * config.num_hidden_layers * config.hidden_size * sequence_length)
