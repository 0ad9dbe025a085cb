"""The reduced quickstart: examples/quickstart with tiny sizes, so data, training and serving run in a few minutes."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from shipped import FINETUNE, QUICKSTART, validated

# Only sizes change; the steps, the model family, the worker count and the serving setup stay the quickstart's.
REDUCED: dict[str, dict[tuple[str, ...], object]] = {
    "DataPipeline": {
        ("spec", "source", "builtin", "maxDocuments"): 400,
        ("spec", "tokenizer", "train", "vocabSize"): 512,
        ("spec", "tokenizer", "sequenceLength"): 64,
    },
    "TrainingJob": {
        ("spec", "model", "layers"): 1,
        ("spec", "model", "hiddenSize"): 64,
        ("spec", "model", "contextLength"): 64,
        ("spec", "training", "maxSteps"): 20,
        ("spec", "training", "microBatchSize"): 8,
        ("spec", "training", "warmupSteps"): 2,
        ("spec", "training", "logIntervalSteps"): 2,
        ("spec", "evaluation", "intervalSteps"): 10,
        ("spec", "evaluation", "maxBatches"): 2,
        ("spec", "checkpoint", "intervalSteps"): 10,
    },
    "ModelDeployment": {("spec", "generation", "maxTokens"): 16},
}


def _set(doc: dict, path: tuple[str, ...], value: object) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    assert path[-1] in node, f"{doc['kind']}: {'.'.join(path)} is not in the shipped example any more"
    node[path[-1]] = value


@pytest.fixture
def reduced_quickstart(tmp_path: Path) -> Path:
    """A directory with the quickstart manifests at reduced sizes (relative output paths, as in the example)."""
    out = tmp_path / "quickstart"
    out.mkdir()
    validated(QUICKSTART)  # as shipped
    for source in sorted(QUICKSTART.glob("*.yaml")):
        doc = yaml.safe_load(source.read_text())
        for path, value in REDUCED[doc["kind"]].items():
            _set(doc, path, value)
        (out / source.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    validated(out)  # and reduced
    return out


# The fine-tune chain at the smallest sizes that still train: both objectives, the LoRA adapter and the chat API stay.
REDUCED_FINETUNE: dict[str, dict[tuple[str, ...], object]] = {
    "finetune-instructions": {
        ("spec", "source", "builtin", "maxDocuments"): 160,
        ("spec", "tokenizer", "train", "vocabSize"): 384,
        ("spec", "tokenizer", "sequenceLength"): 64,
    },
    "finetune-preferences": {
        ("spec", "source", "builtin", "maxDocuments"): 160,
        ("spec", "tokenizer", "sequenceLength"): 64,
    },
    "finetune-sft": {
        ("spec", "model", "layers"): 1,
        ("spec", "model", "hiddenSize"): 64,
        ("spec", "model", "intermediateSize"): 128,
        ("spec", "model", "contextLength"): 64,
        ("spec", "training", "maxSteps"): 12,
        ("spec", "training", "microBatchSize"): 8,
        ("spec", "training", "warmupSteps"): 2,
        ("spec", "training", "logIntervalSteps"): 4,
        ("spec", "evaluation", "intervalSteps"): 6,
        ("spec", "evaluation", "maxBatches"): 1,
        ("spec", "checkpoint", "intervalSteps"): 6,
    },
    "finetune-dpo": {
        ("spec", "training", "maxSteps"): 6,
        ("spec", "training", "microBatchSize"): 4,
        ("spec", "training", "logIntervalSteps"): 3,
        ("spec", "evaluation", "intervalSteps"): 3,
        ("spec", "evaluation", "maxBatches"): 1,
        ("spec", "checkpoint", "intervalSteps"): 3,
    },
    "finetune-chat": {("spec", "generation", "maxTokens"): 12},
}


@pytest.fixture
def reduced_finetune(tmp_path: Path) -> Path:
    """A directory with the fine-tune manifests at reduced sizes (relative output paths, as in the example)."""
    out = tmp_path / "finetune"
    out.mkdir()
    validated(FINETUNE)  # as shipped
    for source in sorted(FINETUNE.glob("*.yaml")):
        doc = yaml.safe_load(source.read_text())
        for path, value in REDUCED_FINETUNE[doc["metadata"]["name"]].items():
            _set(doc, path, value)
        (out / source.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    validated(out)  # and reduced
    return out


def _free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[..., int]:
    """A function returning a TCP port nothing listens on."""
    return _free_port
