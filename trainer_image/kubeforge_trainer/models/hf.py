"""LEGACY, for serving only: the GPT-2 name mapping between Hugging Face GPT-2 and the old kubeforge decoder
(serve/loading.py converts old kubeforge model directories with it). Training no longer uses it; remove it with
gpt.py when serving drops that converter.

Our decoder is GPT-2-shaped (pre-LayerNorm, tanh GELU, learned positions, tied embeddings), so GPT-2 weights map
one to one: Hugging Face's Conv1D layers store (in, out) and are transposed into nn.Linear's (out, in).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

SUPPORTED_MODEL_TYPES = ("gpt2",)
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_LAYER_NAMES = {
    "ln_1": "ln1",
    "ln_2": "ln2",
    "attn.c_attn": "attn.qkv",
    "attn.c_proj": "attn.proj",
    "mlp.c_fc": "fc1",
    "mlp.c_proj": "fc2",
}


def hf_gpt2_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields (architecture only) from a Hugging Face GPT-2 config.json."""
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function {activation!r} is not supported (GPT-2's gelu_new is)")
    return {
        "vocab_size": int(hf_config["vocab_size"]),
        "n_layers": int(hf_config["n_layer"]),
        "n_heads": int(hf_config["n_head"]),
        "d_model": int(hf_config["n_embd"]),
        "context_length": int(hf_config.get("n_positions") or hf_config["n_ctx"]),
        "eos_token_id": hf_config.get("eos_token_id"),
    }


def hf_gpt2_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kubeforge GPT parameter names and layouts from a Hugging Face GPT-2 state dict (GPT2Model or LMHead)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        key = name.removeprefix("transformer.")
        if key.startswith("lm_head.") or key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the head is tied to wte; the causal-mask buffers of old checkpoints carry no weights
        if key in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            out[key] = tensor
            continue
        parts = key.split(".")
        if parts[0] != "h" or len(parts) < 4:
            raise ValueError(f"unexpected GPT-2 weight {name!r}")
        layer, rest = parts[1], ".".join(parts[2:])
        module, leaf = rest.rsplit(".", 1)
        if module not in _LAYER_NAMES:
            raise ValueError(f"unexpected GPT-2 weight {name!r}")
        if module in _CONV1D and leaf == "weight":
            tensor = tensor.t().contiguous()
        out[f"blocks.{layer}.{_LAYER_NAMES[module]}.{leaf}"] = tensor
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf_gpt2_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path | None]:
    """(ModelConfig architecture fields, kubeforge-named state dict, tokenizer.json path or None) of a local
    Hugging Face GPT-2 directory."""
    path = Path(directory)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory: config.json is missing")
    fields = hf_gpt2_config(json.loads(config_file.read_text()))
    state = hf_gpt2_state_dict(_read_weights(path))
    tokenizer = path / "tokenizer.json"
    return fields, state, tokenizer if tokenizer.is_file() else None
