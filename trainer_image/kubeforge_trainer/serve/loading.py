"""Loading a model directory for serving: a Hugging Face directory (``save_pretrained``: config.json with a
``model_type``, weights, tokenizer files) through transformers' Auto classes, or, LEGACY, a kubeforge-format
directory (our own config.json, model.safetensors, tokenizer.json).

LEGACY (delete once training exports Hugging Face directories): a kubeforge GPT language model is converted on load
into a transformers ``GPT2LMHeadModel`` (the GPT-2 name mapping of models/hf.py, inverted), so the one serving
engine runs on a transformers model either way; a kubeforge classifier is served by its own network, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from ..models import load_model_dir
from ..models.hf import _CONV1D, _LAYER_NAMES

LANGUAGE_MODELING = "languageModeling"
CLASSIFICATION = "classification"
HF_FORMAT = "transformers"
LEGACY_FORMAT = "kubeforge"  # LEGACY


@dataclass(eq=False)
class LoadedModel:
    """A model ready for the engine: a transformers model (or the legacy classifier) and its tokenizer."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: str
    context_length: int
    eos_token_ids: frozenset[int]
    pad_token_id: int
    labels: tuple[str, ...]
    format: str

    @property
    def num_parameters(self) -> int:
        """Parameters of the network (shared tensors counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's chat template, if the model has one."""
        return getattr(self.tokenizer, "chat_template", None)


def is_hf_dir(directory: Path) -> bool:
    """Whether config.json is a Hugging Face config (it names a model_type)."""
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: config.json is missing")
    return "model_type" in json.loads(config.read_text())


def load_for_serving(directory: Path, device: str = "cpu") -> LoadedModel:
    """The model of a local directory, in eval mode on device."""
    if is_hf_dir(directory):
        return _load_hf(directory, device)
    return _load_legacy(directory, device)


def _eos_ids(*candidates: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in candidates:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _load_hf(directory: Path, device: str) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    config = json.loads((directory / "config.json").read_text())
    classifier = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = auto.from_pretrained(str(directory)).to(device).eval()
    cfg = model.config
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not context:
        raise ValueError(f"{directory}/config.json: no max_position_embeddings or n_positions (context length)")
    generation = getattr(model, "generation_config", None)
    eos = _eos_ids(getattr(generation, "eos_token_id", None), cfg.eos_token_id, tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else cfg.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0  # padding is masked out; any id will do
    labels = tuple(cfg.id2label[i] for i in sorted(cfg.id2label)) if classifier else ()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        task=CLASSIFICATION if classifier else LANGUAGE_MODELING,
        context_length=int(context),
        eos_token_ids=eos,
        pad_token_id=int(pad),
        labels=labels,
        format=HF_FORMAT,
    )


# ---- LEGACY: kubeforge-format directories (delete once training exports Hugging Face directories) -------------


def gpt2_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LEGACY: GPT2LMHeadModel names and layouts from a kubeforge GPT state dict (models/hf.py inverted)."""
    hf_module = {ours: theirs for theirs, ours in _LAYER_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue  # tied to wte
        if not name.startswith("blocks."):
            out[f"transformer.{name}"] = tensor
            continue
        _, layer, rest = name.split(".", 2)
        module, leaf = rest.rsplit(".", 1)
        theirs = hf_module[module]
        if theirs in _CONV1D and leaf == "weight":
            tensor = tensor.t().contiguous()  # nn.Linear (out, in) -> Conv1D (in, out)
        out[f"transformer.h.{layer}.{theirs}.{leaf}"] = tensor
    return out


def _load_legacy(directory: Path, device: str) -> LoadedModel:
    """LEGACY: a kubeforge directory; its GPT language model becomes a transformers GPT2LMHeadModel."""
    network, config, raw_tokenizer = load_model_dir(directory, device="cpu")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw_tokenizer)
    eos = _eos_ids(config.eos_token_id)
    common = {
        "tokenizer": tokenizer,
        "context_length": config.context_length,
        "eos_token_ids": eos,
        "pad_token_id": config.pad_token_id,
        "labels": tuple(config.labels) or tuple(str(i) for i in range(config.num_labels)),
        "format": LEGACY_FORMAT,
    }
    if config.task == CLASSIFICATION:
        return LoadedModel(model=network.to(device).eval(), task=CLASSIFICATION, **common)
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context_length,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        activation_function="gelu_new",  # kubeforge's tanh GELU
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        eos_token_id=config.eos_token_id,
        bos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(hf_config)
    missing, unexpected = model.load_state_dict(gpt2_state_dict(network.state_dict()), strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(".attn.bias")]
    if missing or unexpected:
        raise ValueError(
            f"{directory}: kubeforge GPT weights do not map onto GPT-2 (missing {missing}, extra {unexpected})"
        )
    model.tie_weights()
    return LoadedModel(model=model.to(device).eval(), task=LANGUAGE_MODELING, **common)
