"""The inference-ready model directory: what training exports and serving loads.

Layout (all files flat in one directory)::

    config.json        ModelConfig (architecture, task, labels, special token ids)
    model.safetensors  weights (consolidated, fp32, tied embeddings stored once)
    tokenizer.json     Hugging Face `tokenizers` file
    kubeforge.json     {"version": ..., "packageVersion": ..., "createdAt": ..., "metrics": {...}, ...}
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer

from .. import storage
from .gpt import ModelConfig, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "kubeforge.json"


def save_model_dir(
    directory: str | Path,
    model: torch.nn.Module,
    config: ModelConfig,
    tokenizer_file: str | Path,
    info: dict[str, Any],
) -> Path:
    """Write an inference-ready model directory (local path); returns it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    save_model(model, str(out / WEIGHTS_FILE))
    shutil.copyfile(tokenizer_file, out / TOKENIZER_FILE)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return out


def export_model(
    uri: str,
    model: torch.nn.Module,
    config: ModelConfig,
    tokenizer_file: str | Path,
    info: dict[str, Any],
) -> str:
    """save_model_dir to a local path or an object-store URI; returns the URI."""
    if not storage.is_remote(uri):
        save_model_dir(storage.local_path(uri), model, config, tokenizer_file, info)
        return uri
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(tmp, model, config, tokenizer_file, info)
        storage.upload_dir(tmp, uri)
    return uri


def read_model_info(directory: str | Path) -> dict[str, Any]:
    """kubeforge.json of a local model directory."""
    return json.loads((Path(directory) / INFO_FILE).read_text())


def load_model_dir(directory: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, ModelConfig, Tokenizer]:
    """(model in eval mode, config, tokenizer) from a local model directory."""
    path = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a kubeforge model directory: {name} is missing")
    config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    model = build_model(config)
    load_model(model, str(path / WEIGHTS_FILE), device=device)
    model.to(device).eval()
    return model, config, Tokenizer.from_file(str(path / TOKENIZER_FILE))
