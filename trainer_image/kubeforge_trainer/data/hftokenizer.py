"""The run's tokenizer as one value that travels to the Ray tasks (a Bundle), whether it was trained, loaded from a
tokenizers file or taken from a Hugging Face model directory (`tokenizer.fromModel`), and written into the output in
`save_pretrained` form so a TrainingJob loads it with `AutoTokenizer`.

Encoding always goes through the `tokenizers` library (tokenize.py); `transformers` is used to load a model
directory, to render chat templates and to write the tokenizer out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from tokenizers import Tokenizer

from .. import storage
from . import tokenize
from .errors import DataPipelineError

SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
# Files of a model directory that are not the tokenizer's: never downloaded to load it.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


@dataclass(frozen=True)
class Bundle:
    """Everything a task needs of the tokenizer: its tokenizers JSON, the names of its special tokens, its chat
    template, and where it came from (for the manifest)."""

    json: str
    special: dict[str, str | None]
    chat_template: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def token_id(self, name: str) -> int | None:
        """The id of special token `name` (e.g. eos_token), None when the tokenizer has none."""
        token = self.special.get(name)
        return None if token is None else tokenizer(self).token_to_id(token)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of what decides the ids: the tokenizers JSON, the special tokens and the chat template."""
        text = json.dumps([self.json, self.special, self.chat_template], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


_BUILT: dict[str, Any] = {}
"""The transformers tokenizer of the last bundle, by digest."""


def tokenizer(bundle: Bundle) -> Tokenizer:
    """The bundle's tokenizers.Tokenizer, built once per process (shared: encode with it, do not change it)."""
    return tokenize.from_json(bundle.json)


def transformers_tokenizer(bundle: Bundle) -> Any:
    """The bundle as a transformers fast tokenizer (for chat templates and save_pretrained), built once per process."""

    def build() -> Any:
        from transformers import PreTrainedTokenizerFast

        special = {k: v for k, v in bundle.special.items() if v is not None}
        hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bundle.json), **special)
        hf.chat_template = bundle.chat_template
        return hf

    return _cached(bundle, "transformers", build)


def _cached(bundle: Bundle, kind: str, build: Any) -> Any:
    key = f"{kind}:{bundle.digest}"
    if key not in _BUILT:
        _BUILT.clear()  # every task of a run passes the same bundle: keep the last one
        _BUILT[key] = build()
    return _BUILT[key]


def from_tokenizers(tok: Tokenizer, pad: str, eos: str, source: dict[str, Any]) -> Bundle:
    """A bundle of a plain tokenizers file or a trained tokenizer, whose pad and eos tokens are named."""
    return Bundle(
        tok.to_str(), {"bos_token": None, "eos_token": eos, "pad_token": pad, "unk_token": None}, None, source
    )


def load_model_tokenizer(uri: str, trust_remote_code: bool, field_path: str = "spec.tokenizer.fromModel") -> Bundle:
    """The tokenizer of a Hugging Face model directory (local, PVC or object store), through AutoTokenizer; only the
    tokenizer's files are fetched, never the weights. Special tokens come from its configuration; pad falls back to
    eos (a model without a pad token pads with eos; padded positions are masked, so the id does not matter)."""
    with tempfile.TemporaryDirectory(prefix="kubeforge-tokenizer-") as tmp:
        local, digest = _fetch_tokenizer_files(uri, Path(tmp), field_path)
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(local), trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a bad directory
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            hint = "" if trust_remote_code else " (set spec.tokenizer.trustRemoteCode if it needs its own code)"
            raise DataPipelineError(f"{field_path}: cannot load a tokenizer from {uri}: {first}{hint}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise DataPipelineError(f"{field_path}: the tokenizer at {uri} has no fast (tokenizers) form")
    special = {name: _token_text(getattr(hf, name, None)) for name in SPECIAL_NAMES}
    if special["eos_token"] is None:
        raise DataPipelineError(f"{field_path}: the tokenizer at {uri} has no eos_token")
    if special["pad_token"] is None:
        special["pad_token"] = special["eos_token"]
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    template = hf.chat_template if isinstance(getattr(hf, "chat_template", None), str) else None
    return Bundle(plain.to_str(), special, template, {"kind": "fromModel", "uri": uri, "sha256": digest})


def tokenizer_files_digest(uri: str, field_path: str = "spec.tokenizer.fromModel") -> str:
    """SHA-256 over the tokenizer files of the model directory at uri (what load_model_tokenizer records)."""
    with tempfile.TemporaryDirectory(prefix="kubeforge-tokenizer-") as tmp:
        return _fetch_tokenizer_files(uri, Path(tmp), field_path)[1]


def _token_text(token: Any) -> str | None:
    return None if token is None else str(token)


def _fetch_tokenizer_files(uri: str, into: Path, field_path: str) -> tuple[Path, str]:
    """(a local directory holding the tokenizer files of the model directory at uri, SHA-256 over their names and
    contents in name order)."""
    try:
        fs, root = storage.resolve(uri)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataPipelineError(f"{field_path}: cannot list {uri}: {str(exc).splitlines()[0]}") from None
    files = sorted(
        (i for i in infos if i.type == pafs.FileType.File and not i.base_name.endswith(_WEIGHT_SUFFIXES)),
        key=lambda i: i.base_name,
    )
    if not any(i.base_name.startswith("tokenizer") for i in files):
        raise DataPipelineError(f"{field_path}: no tokenizer files in {uri}")
    digest = hashlib.sha256()
    for info in files:
        with fs.open_input_stream(info.path) as f:
            data = f.read()
        digest.update(info.base_name.encode() + b"\0" + hashlib.sha256(data).digest())
        (into / info.base_name).write_bytes(data)
    return into, digest.hexdigest()


def save_pretrained(bundle: Bundle, output_uri: str) -> list[str]:
    """Write the tokenizer in save_pretrained form (tokenizer.json, tokenizer_config.json, chat_template.jinja when it
    has a template) at the output's root; returns the file names."""
    hf = transformers_tokenizer(bundle)
    names = []
    with tempfile.TemporaryDirectory(prefix="kubeforge-tokenizer-out-") as tmp:
        hf.save_pretrained(tmp)
        for name in sorted(os.listdir(tmp)):
            storage.write_text_atomic(storage.join(output_uri, name), (Path(tmp) / name).read_text(encoding="utf-8"))
            names.append(name)
    return names


def with_chat_template(bundle: Bundle, override: str | None) -> Bundle:
    """The bundle with the template chat and preference render with: spec.tokenizer.chatTemplate, else the
    tokenizer's own, else chat.DEFAULT_CHAT_TEMPLATE."""
    from .chat import DEFAULT_CHAT_TEMPLATE

    return dataclasses.replace(bundle, chat_template=override or bundle.chat_template or DEFAULT_CHAT_TEMPLATE)


def describe(bundle: Bundle) -> dict[str, Any]:
    """The manifest's tokenizerSource: where the tokenizer came from, the hash of that source, and the hash of the
    tokenizer the data was encoded with."""
    return {**bundle.source, "tokenizerSha256": bundle.digest}
