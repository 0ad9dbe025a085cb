"""Shared helpers of the chart tests: the real Helm engine (helm-python-sdk, Helm's Go SDK) renders charts/kubeforge."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "kubeforge"
RELEASE = "kf"
NAMESPACE = "kubeforge-system"

Docs = list[dict[str, Any]]


def parse_manifests(rendered: dict[str, str]) -> Docs:
    """Every object in Helm's {template: text} output; switched-off templates come back blank and are dropped."""
    docs: Docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs


def find(docs: Docs, kind: str, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    """Objects of a kind (optionally with that name / namespace)."""
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"].get("name") == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def one(docs: Docs, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """The single object of a kind; fails when there are none or several."""
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: {[d['metadata'] for d in found]}"
    return found[0]


@pytest.fixture(scope="session")
def chart() -> Any:
    """The chart, loaded once by Helm."""
    with helm_python.Chart.load(str(CHART_DIR)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[..., Docs]:
    """render(values, namespace=...) -> the objects Helm renders for those values."""

    def _render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE, name: str = RELEASE) -> Docs:
        return parse_manifests(chart.render(values, name=name, namespace=namespace))

    return _render


@pytest.fixture(scope="session")
def render_notes(chart: Any) -> Callable[..., str]:
    """render_notes(values) -> the NOTES.txt Helm prints after an install."""

    def _notes(values: dict[str, Any] | None = None) -> str:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        return next(text for path, text in out.items() if path.endswith("NOTES.txt"))

    return _notes


# A stand-in for the kuberay-operator chart, NOT the real KubeRay chart: there is no network here to fetch
# kuberay-operator-1.7.1.tgz. It has the dependency's name and version so that Helm's dependency resolution
# (condition, alias, values under `kuberay:`) runs for real, and renders one ConfigMap that echoes its values.
STUB_KUBERAY_CHART_YAML = """\
apiVersion: v2
name: kuberay-operator
version: 1.7.1
description: Test stub standing in for the kuberay-operator chart (not KubeRay).
"""
STUB_KUBERAY_TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: kuberay-operator-stub
  namespace: {{ .Release.Namespace }}
data:
  image-tag: {{ .Values.image.tag | quote }}
"""


@pytest.fixture(scope="session")
def chart_with_stub_dependency(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart whose charts/ holds the stub kuberay-operator dependency (see above)."""
    root = tmp_path_factory.mktemp("chart-with-stub")
    copy = root / "kubeforge"
    shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("charts"))
    stub = copy / "charts" / "kuberay-operator"
    (stub / "templates").mkdir(parents=True)
    (stub / "Chart.yaml").write_text(STUB_KUBERAY_CHART_YAML)
    (stub / "values.yaml").write_text("image:\n  tag: v1.7.1\n")
    (stub / "templates" / "configmap.yaml").write_text(STUB_KUBERAY_TEMPLATE)
    return copy
