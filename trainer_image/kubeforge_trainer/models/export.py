"""The inference-ready model directory: what training exports and serving loads.

Training exports a plain Hugging Face `save_pretrained` directory (config.json, model*.safetensors,
generation_config.json, tokenizer.json + tokenizer_config.json) plus kubeforge.json (version, metrics, lineage),
or for `lora.export: adapter` a peft adapter directory (adapter_config.json + adapter_model.safetensors) whose
kubeforge.json names its base. `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads the full export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from torch import nn

from .. import storage

CONFIG_FILE = "config.json"
INFO_FILE = "kubeforge.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def hf_tokenizer(tokenizer_file: str | Path, special_token_ids: dict[str, int | None]) -> Any:
    """A transformers fast tokenizer over a `tokenizers` file, with bos/eos/pad/unk tokens set from their ids
    (keys bos_token_id, eos_token_id, pad_token_id, unk_token_id), so save_pretrained writes them."""
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(tokenizer_file))
    specials = {}
    for key, token_id in special_token_ids.items():
        token = raw.id_to_token(token_id) if token_id is not None else None
        if token is not None:
            specials[key.removesuffix("_id")] = token
    return PreTrainedTokenizerFast(tokenizer_object=raw, **specials)


def write_info(directory: str | Path, info: dict[str, Any]) -> None:
    """kubeforge.json (version, metrics, lineage) into a local directory."""
    (Path(directory) / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))


def save_hf_model(
    directory: str | Path,
    model: nn.Module,
    *,
    tokenizer: Any = None,
    info: dict[str, Any] | None = None,
    max_shard_size: str | int = "5GB",
) -> Path:
    """save_pretrained of a transformers model (or a peft model: its adapter alone) plus tokenizer files and
    kubeforge.json into a local directory; returns it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if info is not None:
        write_info(out, info)
    return out


def export_files(source: str | Path, uri: str, info: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """Copy the model files at the top of a local directory (not its subdirectories, not the names in skip) with a
    new kubeforge.json to a local path or object-store URI; a local target is swapped in whole, so a reader never
    sees half a model directory. Returns the URI."""
    with tempfile.TemporaryDirectory(prefix="kubeforge-export-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        for item in Path(source).iterdir():
            if item.is_file() and item.name not in skip and item.name != INFO_FILE:
                shutil.copyfile(item, staging / item.name)
        write_info(staging, info)
        if storage.is_remote(uri):
            storage.upload_dir(staging, uri)
            return uri
        target = Path(storage.local_path(uri))
        target.parent.mkdir(parents=True, exist_ok=True)
        swap = target.with_name(f".tmp-{target.name}")
        shutil.rmtree(swap, ignore_errors=True)
        shutil.copytree(staging, swap)
        shutil.rmtree(target, ignore_errors=True)
        swap.replace(target)
    return uri


def read_model_info(directory: str | Path) -> dict[str, Any]:
    """kubeforge.json of a local model directory."""
    return json.loads((Path(directory) / INFO_FILE).read_text())
