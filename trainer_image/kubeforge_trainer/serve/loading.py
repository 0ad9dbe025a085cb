"""Loading a model directory for serving: a Hugging Face directory (``save_pretrained``: config.json with a
``model_type``, weights, tokenizer files), what training exports, through transformers' Auto classes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

LANGUAGE_MODELING = "languageModeling"
CLASSIFICATION = "classification"
HF_FORMAT = "transformers"


@dataclass(eq=False)
class LoadedModel:
    """A model ready for the engine: a transformers model and its tokenizer."""

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


def load_for_serving(directory: Path, device: str = "cpu") -> LoadedModel:
    """The model of a local Hugging Face directory, in eval mode on device."""
    config = directory / "config.json"
    if not config.is_file() and (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{directory} holds a LoRA adapter, not a model: serve its base model and list this one under "
            "spec.adapters (a TrainingJob with spec.model.lora exports the adapter alone)"
        )
    if not config.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: config.json is missing")
    if "model_type" not in json.loads(config.read_text()):
        raise ValueError(
            f"{directory}/config.json has no model_type: not a Hugging Face directory (the pre-transformers "
            "kubeforge format is no longer served; re-export the model with this version's training)"
        )
    return _load_hf(directory, device)


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
