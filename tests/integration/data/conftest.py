"""Fixtures of the data-step integration tests: one local Ray per module, small real corpora with planted exact and
near duplicates, DataPipeline resources and a status reporter that writes files (the local runner's)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from kubeforge.api import DataPipeline
from kubeforge_trainer.data import builtin
from kubeforge_trainer.progress import FileStatusReporter, read_status_file


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray on two CPUs, shared by the tests of a module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def docstrings() -> list[str]:
    """Distinct (after normalisation), reasonably long standard-library docstrings."""
    seen: set[str] = set()
    out = []
    for doc in builtin.stdlib_docstrings():
        key = _normalized(doc)
        if len(doc) >= 200 and len(doc.split()) >= 40 and key not in seen and "<" not in doc and "@" not in doc:
            seen.add(key)
            out.append(doc)
        if len(out) == 240:
            break
    return out


def perturb(text: str, rng: random.Random) -> str:
    """A near copy: a couple of words replaced."""
    words = text.split(" ")
    for _ in range(2):
        words[rng.randrange(len(words))] = "changed"
    return " ".join(words)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, docstrings) -> dict[str, Any]:
    """Three JSONL files: unique documents (some wrapped in HTML, some with an e-mail address), 30 exact copies
    (other case and spacing, in other files), 20 near copies, 10 empty and 5 too-short rows."""
    rng = random.Random(11)
    root = tmp_path_factory.mktemp("corpus")
    originals = docstrings[:200]
    records = []
    for i, doc in enumerate(originals):
        text = doc
        if i % 10 == 0:
            text = f"<div><p>{doc}</p></div>"
        if i % 15 == 0:
            text += " Contact maintainer@example.org for details."
        records.append({"text": text, "id": f"doc-{i}"})
    plain = [i for i in range(len(originals)) if i % 15]  # copies of documents without an appended address
    exact = [{"text": "  " + originals[i].upper().replace(" ", "  ") + " ", "id": f"copy-{i}"} for i in plain[:30]]
    near = [{"text": perturb(originals[i], rng), "id": f"near-{i}"} for i in plain[100:120]]
    junk = [{"text": "   ", "id": f"empty-{i}"} for i in range(10)] + [
        {"text": "tiny", "id": f"short-{i}"} for i in range(5)
    ]
    files = [
        write_jsonl(root / "part-0.jsonl", records[:100] + junk),
        write_jsonl(root / "part-1.jsonl", records[100:] + near[:10]),
        write_jsonl(root / "nested-part-2.jsonl", exact + near[10:]),
    ]
    return {"root": root, "files": files, "exact": 30, "near": 20, "empty": 10, "short": 5, "rows": 265}


def _datapipeline(name: str, spec: dict[str, Any]) -> DataPipeline:
    return DataPipeline.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "DataPipeline",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


@pytest.fixture
def make_pipeline():
    """A DataPipeline resource (namespace default) from a name and a spec, as the API server would hand it over."""
    return _datapipeline


@pytest.fixture
def run_pipeline(tmp_path):
    """Run the data step with the reporter the local runner uses (status in <dir>/DataPipeline/<name>.json);
    returns (manifest, status)."""
    from kubeforge_trainer.data import run_datapipeline

    def run(resource: DataPipeline) -> tuple[dict[str, Any], dict[str, Any]]:
        name = resource.metadata.name
        reporter = FileStatusReporter("DataPipeline", name, tmp_path / "status", interval=0.0)
        manifest = run_datapipeline(resource, reporter)
        reporter.close()
        return manifest, read_status_file(tmp_path / "status" / "DataPipeline" / f"{name}.json")

    return run


def doc_ids(texts: list[str]) -> list[str]:
    """The doc-N ids found in decoded rows."""
    return [m.group(0) for t in texts for m in [re.search(r"doc-\d+", t)] if m]


@pytest.fixture
def find_doc_ids():
    return doc_ids
