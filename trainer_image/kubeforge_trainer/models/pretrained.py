"""Hugging Face model directories as starting weights: local paths, PVC mounts, s3:// and gs:// URIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import storage
from .build import CLASSIFICATION

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_model_dir(uri: str, cache_dir: str | Path) -> Path:
    """A local directory with the model's files (downloaded into cache_dir when on an object store)."""
    return storage.materialize_dir(uri, cache_dir)


def read_config(directory: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The transformers config of a local model directory; FileNotFoundError when config.json is missing."""
    from transformers import AutoConfig

    if not (Path(directory) / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a Hugging Face model directory: config.json is missing")
    return AutoConfig.from_pretrained(str(directory), trust_remote_code=trust_remote_code)


def load_pretrained(
    directory: str | Path,
    *,
    task: str,
    num_labels: int = 0,
    torch_dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    quantization: str | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """from_pretrained of a local directory as a causal LM, or as a sequence classifier on the same body (the
    classifier's head starts fresh unless the directory holds one for the same number of labels); NF4 4-bit
    through bitsandbytes when quantization is 'nf4' (CUDA only)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "dtype": DTYPES[torch_dtype],
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
        **(config_overrides or {}),
    }
    if quantization == "nf4":
        if not torch.cuda.is_available():
            raise ValueError("quantization nf4 (QLoRA) needs a CUDA GPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if task == CLASSIFICATION:
        kwargs["num_labels"] = num_labels
        return AutoModelForSequenceClassification.from_pretrained(str(directory), **kwargs)
    return AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)


def resize_vocabulary(model: nn.Module, vocab_size: int) -> bool:
    """Grow the input embedding and output layer to vocab_size rows, new rows at the mean of the old ones (old
    tokens keep their ids and logits); returns whether anything changed. Never shrinks."""
    current = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= current:
        return False
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    # New rows at exactly the mean of the old ones: deterministic on every worker (transformers' mean_resizing
    # samples around the mean), and a new token's logit starts at the average old one.
    with torch.no_grad():
        layers = [model.get_input_embeddings()]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not layers[0].weight:
            layers.append(output)
        for layer in layers:
            layer.weight[current:] = layer.weight[:current].mean(dim=0)
            bias = getattr(layer, "bias", None)
            if bias is not None and bias.shape[0] == vocab_size:
                bias[current:] = bias[:current].mean()
    return True
