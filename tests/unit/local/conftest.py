"""Fixtures of the local-runner unit tests: manifests written to files and validated the way `kubeforge run` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubeforge.validate import Manifest, validate_paths

HEAD = {"apiVersion": "kubeforge.dev/v1alpha1"}


def _datapipeline(name: str = "corpus", task: str = "languageModeling", **meta: str) -> dict:
    """A small valid DataPipeline document."""
    return {
        **HEAD,
        "kind": "DataPipeline",
        "metadata": {"name": name, **meta},
        "spec": {
            "source": {"builtin": {"name": "system-docs", "maxDocuments": 50}},
            "tokenizer": {"task": task, "sequenceLength": 32, "train": {"vocabSize": 300}},
            "output": {"uri": f"runs/{name}/data"},
        },
    }


def _trainingjob(name: str = "gpt", data: str | None = "corpus", task: str = "languageModeling", **meta: str) -> dict:
    """A small valid TrainingJob document reading DataPipeline `data` (or a dataRef.uri when data is None)."""
    data_ref = {"name": data} if data is not None else {"uri": "/datasets/ready"}
    model: dict = {"task": task, "layers": 1, "heads": 2, "hiddenSize": 16, "contextLength": 32}
    if task == "classification":
        model["numLabels"] = 2
    return {
        **HEAD,
        "kind": "TrainingJob",
        "metadata": {"name": name, **meta},
        "spec": {
            "dataRef": data_ref,
            "model": model,
            "training": {"maxSteps": 4},
            "checkpoint": {"uri": f"runs/{name}/checkpoints"},
        },
    }


def _modeldeployment(name: str = "gpt", model: str = "gpt", canary: str | None = None, **meta: str) -> dict:
    """A small valid ModelDeployment document serving TrainingJob `model`."""
    spec: dict = {"modelRef": {"name": model}}
    if canary:
        spec["canary"] = {"modelRef": {"name": canary}, "trafficPercent": 20}
    return {**HEAD, "kind": "ModelDeployment", "metadata": {"name": name, **meta}, "spec": spec}


@pytest.fixture
def write_manifests(tmp_path: Path) -> Callable[..., Path]:
    """Write documents as one multi-document YAML file (name given or manifests.yaml); returns its path."""

    def write(*docs: dict, name: str = "manifests.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return path

    return write


@pytest.fixture
def manifests(write_manifests: Callable[..., Path]) -> Callable[..., list[Manifest]]:
    """Validated Manifests of the given documents (fails the test when they are not valid)."""

    def load(*docs: dict) -> list[Manifest]:
        report = validate_paths([write_manifests(*docs)])
        assert report.ok, [str(p) for p in report.problems]
        return report.manifests

    return load


@pytest.fixture
def datapipeline() -> Callable[..., dict]:
    """Builder of small valid DataPipeline documents."""
    return _datapipeline


@pytest.fixture
def trainingjob() -> Callable[..., dict]:
    """Builder of small valid TrainingJob documents."""
    return _trainingjob


@pytest.fixture
def modeldeployment() -> Callable[..., dict]:
    """Builder of small valid ModelDeployment documents."""
    return _modeldeployment
