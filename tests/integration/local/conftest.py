"""Fixtures of the local-runner integration tests: free ports, small manifests, a tiny trained model directory."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

HEAD = {"apiVersion": "kubeforge.dev/v1alpha1"}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ports() -> tuple[int, int]:
    """(HTTP port, metrics port) for a run that serves."""
    return free_port(), free_port()


def _small_datapipeline(name: str = "corpus", max_documents: int = 300) -> dict:
    """A DataPipeline over a small slice of the builtin corpus, with both dedup steps."""
    return {
        **HEAD,
        "kind": "DataPipeline",
        "metadata": {"name": name},
        "spec": {
            "source": {"builtin": {"name": "system-docs", "maxDocuments": max_documents}},
            "steps": [{"collapseWhitespace": {}}, {"lengthFilter": {"minChars": 64}}, {"exactDedup": {}}],
            "tokenizer": {"train": {"vocabSize": 512}, "task": "languageModeling", "sequenceLength": 64},
            "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 1},
            "output": {"uri": f"runs/{name}/data"},
        },
    }


def _small_trainingjob(name: str = "gpt", data: str = "corpus", steps: int = 40, checkpoint_every: int = 10) -> dict:
    """A one-layer GPT trained on two CPU workers for `steps` steps, checkpointing every `checkpoint_every`."""
    return {
        **HEAD,
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "dataRef": {"name": data},
            "model": {"layers": 1, "heads": 2, "hiddenSize": 32, "contextLength": 64},
            "training": {"maxSteps": steps, "microBatchSize": 4, "learningRate": 0.003, "logIntervalSteps": 1},
            "evaluation": {"intervalSteps": checkpoint_every, "maxBatches": 2},
            "checkpoint": {"uri": f"runs/{name}/checkpoints", "intervalSteps": checkpoint_every},
            "workers": {"count": 2, "cpu": "500m", "memory": "1Gi"},
        },
    }


@pytest.fixture
def write_docs(tmp_path: Path) -> Callable[..., Path]:
    """Write documents into tmp_path/<name> (one YAML file); returns its path."""

    def write(*docs: dict, name: str = "manifests.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny language-model directory in the exported layout (trained in seconds on docstrings)."""
    from support.tiny_models import build_tiny_language_model

    return build_tiny_language_model(tmp_path_factory.mktemp("model") / "model", version="v1", steps=20).path


@pytest.fixture
def small_datapipeline() -> Callable[..., dict]:
    """Builder of DataPipelines over a small slice of the builtin corpus."""
    return _small_datapipeline


@pytest.fixture
def small_trainingjob() -> Callable[..., dict]:
    """Builder of small TrainingJobs (two CPU workers, frequent checkpoints)."""
    return _small_trainingjob
