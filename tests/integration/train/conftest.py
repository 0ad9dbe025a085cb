"""Fixtures of the training integration tests: tiny datasets in the DataPipeline layout, one local Ray per module,
TrainingJob manifests, and a way to kill a training worker process.

The datasets are real: a BPE tokenizer (`tokenizers`) trained on Python standard-library docstrings, packed
language-modeling rows, and a three-class toy classification task whose answer is known (the class is the word
that ends each document).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from kubeforge.api import TrainingJob
from kubeforge_trainer.models.build import build_config, build_model
from kubeforge_trainer.progress import FileStatusReporter, read_status_file
from kubeforge_trainer.train.synthetic import write_dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

SEQUENCE_LENGTH = 33  # packed rows: the model sees 32 tokens and predicts the next 32
CONTEXT = 32
CLASSES = ("file", "string", "object")
STDLIB_MODULES = (
    "json",
    "os",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "argparse",
    "logging",
    "csv",
    "datetime",
    "decimal",
    "heapq",
    "bisect",
    "statistics",
    "random",
    "shutil",
    "tempfile",
    "threading",
    "queue",
    "zipfile",
    "tarfile",
    "urllib.parse",
    "email.message",
)


def _docstring_lines() -> list[str]:
    lines: list[str] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *(v for _, v in inspect.getmembers(module))]:
            doc = inspect.getdoc(obj) if callable(obj) or obj is module else None
            if doc:
                lines.extend(line.strip() for line in doc.splitlines() if len(line.split()) >= 4)
    return list(dict.fromkeys(lines))  # unique, in a stable order


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """A few thousand unique docstring lines of the standard library."""
    lines = _docstring_lines()
    assert len(lines) > 500
    return lines


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    """A 512-token BPE tokenizer trained on the corpus (<pad> = 0, <eos> = 1, <unk> = 2)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<eos>", "<unk>"])
    tokenizer.train_from_iterator(corpus[:800], trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _pack(tokenizer: Tokenizer, lines: list[str], rows: int) -> list[list[int]]:
    stream: list[int] = []
    for line in lines:
        stream.extend(tokenizer.encode(line).ids)
        stream.append(1)
    assert len(stream) >= rows * SEQUENCE_LENGTH, "corpus too small for the requested rows"
    return [stream[i * SEQUENCE_LENGTH : (i + 1) * SEQUENCE_LENGTH] for i in range(rows)]


@pytest.fixture(scope="session")
def lm_dataset(tmp_path_factory: pytest.TempPathFactory, corpus: list[str], tokenizer_file: Path) -> Path:
    """Language-modeling dataset: 256 train, 16 validation and 16 test rows of 33 tokens."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    rows = _pack(tokenizer, corpus, 288)
    return write_dataset(
        tmp_path_factory.mktemp("lm-data"),
        task="languageModeling",
        sequence_length=SEQUENCE_LENGTH,
        tokenizer_file=tokenizer_file,
        vocab_size=tokenizer.get_vocab_size(),
        splits={"train": rows[:256], "validation": rows[256:272], "test": rows[272:]},
        pad_token_id=0,
        eos_token_id=1,
        rows_per_shard=100,
    )


@pytest.fixture(scope="session")
def classification_dataset(tmp_path_factory: pytest.TempPathFactory, corpus: list[str], tokenizer_file: Path) -> Path:
    """Toy classification with a known answer: 8 one-token corpus words, then the class word (file, string or
    object, one token each) that decides the label; every document is 9 tokens long."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    assert all(len(tokenizer.encode(word).ids) == 1 for word in CLASSES)
    words = sorted(
        {w for line in corpus[:400] for w in line.split() if w.isalpha() and len(tokenizer.encode(w).ids) == 1}
        - set(CLASSES)
    )
    rng = random.Random(3)
    splits: dict[str, list[list[int]]] = {}
    labels: dict[str, list[int]] = {}
    for split, count in (("train", 256), ("validation", 24), ("test", 30)):
        splits[split], labels[split] = [], []
        for _ in range(count):
            label = rng.randrange(len(CLASSES))
            text = " ".join([*rng.sample(words, 8), CLASSES[label]])
            splits[split].append(tokenizer.encode(text).ids)
            labels[split].append(label)
    return write_dataset(
        tmp_path_factory.mktemp("cls-data"),
        task="classification",
        sequence_length=CONTEXT,
        tokenizer_file=tokenizer_file,
        vocab_size=tokenizer.get_vocab_size(),
        splits=splits,
        labels=labels,
        label_names=CLASSES,
        pad_token_id=0,
        eos_token_id=1,
    )


@pytest.fixture
def hf_llama_dir(tmp_path: Path, tokenizer_file: Path) -> Path:
    """A tiny randomly initialised LlamaForCausalLM saved with save_pretrained, sharing our tokenizer."""
    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    config = build_config(
        "llama", vocab_size=vocab, hidden_size=32, layers=1, heads=2, intermediate_size=64, context_length=32
    )
    torch.manual_seed(1)
    directory = tmp_path / "hf-llama"
    build_model(config).save_pretrained(directory)
    shutil.copyfile(tokenizer_file, directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray per test module (4 logical CPUs: two 1-CPU training workers plus Ray Data's readers)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield
    ray.shutdown()


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """base with override merged in recursively (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_job(name: str, data: Path, checkpoints: Path, **spec_overrides: Any) -> TrainingJob:
    """A TrainingJob for the tiny datasets: 2 workers, a 1-layer hidden-32 Llama-architecture model, context 32, CPU."""
    spec = {
        "dataRef": {"uri": str(data)},
        "model": {
            "task": "languageModeling",
            "architecture": "llama",
            "layers": 1,
            "heads": 2,
            "kvHeads": 1,
            "hiddenSize": 32,
            "intermediateSize": 64,
            "contextLength": CONTEXT,
        },
        "training": {
            "maxSteps": 24,
            "microBatchSize": 4,
            "learningRate": 0.02,
            "warmupSteps": 2,
            "schedule": "cosine",
            "precision": "bf16",
            "seed": 7,
            "logIntervalSteps": 2,
        },
        "deepspeed": {"zeroStage": 2},
        "evaluation": {"intervalSteps": 8},
        "checkpoint": {"uri": str(checkpoints), "intervalSteps": 8, "keepLast": 1},
        "workers": {"count": 2, "cpu": 1, "memory": "512Mi"},
        "failurePolicy": {"maxWorkerFailures": 0},
    }
    if "pretrained" in spec_overrides.get("model", {}):
        spec["model"] = {}  # the pretrained directory fixes the architecture
    manifest = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": deep_update(spec, spec_overrides),
    }
    return TrainingJob.model_validate(manifest)


class StatusFile:
    """A real FileStatusReporter into a temporary status directory, and a reader of what it wrote."""

    def __init__(self, directory: Path, name: str) -> None:
        self.reporter = FileStatusReporter("TrainingJob", name, directory, interval=0.0)

    def read(self) -> dict[str, Any]:
        """The status fields written so far."""
        return read_status_file(self.reporter.path)


@pytest.fixture
def status_file(tmp_path: Path) -> Callable[[str], StatusFile]:
    """Factory of StatusFile reporters for a resource name."""
    return lambda name: StatusFile(tmp_path / "status", name)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a curve CSV."""
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


class WorkerKiller:
    """A child process (kill_worker.py) that SIGKILLs one training worker of this test's Ray once marker exists."""

    def __init__(self, marker: Path, timeout: float = 240.0) -> None:
        import ray

        raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
        command = [sys.executable, str(Path(__file__).with_name("kill_worker.py")), str(marker), str(raylet)]
        self._process = subprocess.Popen([*command, str(timeout)], stdout=subprocess.PIPE, text=True)

    def outcome(self, timeout: float = 30.0) -> dict[str, Any]:
        """What it did: {"killed": pid, "workers": [...]}, or {"killed": None, "reason": ...}."""
        try:
            out, _ = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return {"killed": None, "reason": "the marker did not appear while the run lasted"}
        return json.loads(out)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file."""
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The helper functions above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(
        make_job=make_job,
        read_csv_rows=read_csv_rows,
        read_json=read_json,
        WorkerKiller=WorkerKiller,
    )
