"""`helm lint --strict` (Helm's Go SDK) and the optional KubeRay dependency.

There is no network here to fetch the real kuberay-operator chart, so the dependency is tested two ways: the
declaration in Chart.yaml (name, pinned version, repository, alias, condition), and Helm's own dependency handling
with a clearly marked stand-in chart of the same name and version (conftest.STUB_KUBERAY_*), never the real KubeRay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_toggles import TOGGLES
from conftest import CHART_DIR, NAMESPACE, RELEASE, helm_python, parse_manifests

LINT_KUBE_VERSIONS = ("v1.29.0", "v1.37.0")
MISSING_DEPENDENCY = "chart directory is missing these dependencies: kuberay-operator"


def _problems(report: dict) -> list[str]:
    """Lint findings of severity warning (2) or error (3); info (1), e.g. "icon is recommended", is not one."""
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + report["errors"]


@pytest.mark.parametrize("kube_version", LINT_KUBE_VERSIONS)
@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_lint_strict(chart_with_stub_dependency: Path, toggle: str, kube_version: str) -> None:
    report = helm_python.lint(
        str(chart_with_stub_dependency), TOGGLES[toggle], strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    assert _problems(report) == []


def test_lint_reports_broken_values(chart_with_stub_dependency: Path) -> None:
    """Lint is not vacuous: values the schema forbids are reported."""
    report = helm_python.lint(str(chart_with_stub_dependency), {"operator": {"logLevel": "LOUD"}}, strict=True)
    assert any("logLevel" in p for p in _problems(report))


def test_lint_of_the_checkout_only_misses_the_dependency_archive() -> None:
    """Without `helm dependency build`, the only finding is the missing kuberay-operator archive."""
    report = helm_python.lint(str(CHART_DIR), None, strict=True, kube_version=LINT_KUBE_VERSIONS[0])
    assert _problems(report) == [f"{CHART_DIR}: {MISSING_DEPENDENCY}", MISSING_DEPENDENCY]


def test_kuberay_dependency_declaration() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    (dep,) = meta["dependencies"]
    assert dep["name"] == "kuberay-operator"
    assert dep["alias"] == "kuberay"
    assert dep["condition"] == "kuberay.enabled"
    assert dep["repository"] == "https://ray-project.github.io/kuberay-helm/"
    major, minor, _patch = (int(x) for x in dep["version"].split("."))  # pinned, not a range
    assert (major, minor) >= (1, 5)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["kuberay"] == {"enabled": False}
    deps = helm_python.dependency_list(str(CHART_DIR))
    assert [(d["name"], d["version"], d["repository"]) for d in deps] == [
        (dep["name"], dep["version"], dep["repository"])
    ]


def test_helm_install_needs_the_dependency_built() -> None:
    """`helm install` from a checkout fails until `helm dependency build` (docs/install.md says so)."""
    config = helm_python.Config(namespace=NAMESPACE)
    with helm_python.Chart.load(str(CHART_DIR)) as chart, pytest.raises(helm_python.HelmChartInvalidError) as err:
        config.install(chart, RELEASE, None, dry_run="client")
    assert "missing in charts/ directory: kuberay-operator" in str(err.value)


def _install_dry_run(chart_dir: Path, values: dict | None) -> list[dict]:
    config = helm_python.Config(namespace=NAMESPACE)
    with helm_python.Chart.load(str(chart_dir)) as chart:
        release = config.install(chart, RELEASE, values, dry_run="client")
    return parse_manifests({"manifest": release["manifest"]})


def test_kuberay_condition_with_stub_dependency(chart_with_stub_dependency: Path) -> None:
    """Helm's dependency resolution: the subchart renders only with kuberay.enabled, with values under `kuberay:`."""
    statuses = helm_python.dependency_list(str(chart_with_stub_dependency))
    assert [d["status"] for d in statuses] == ["unpacked"]

    off = _install_dry_run(chart_with_stub_dependency, None)
    assert not [d for d in off if d["metadata"]["name"] == "kuberay-operator-stub"]

    on = _install_dry_run(chart_with_stub_dependency, {"kuberay": {"enabled": True, "image": {"tag": "v9.9.9"}}})
    (stub,) = [d for d in on if d["metadata"]["name"] == "kuberay-operator-stub"]
    assert stub["data"] == {"image-tag": "v9.9.9"}
    assert stub["metadata"]["namespace"] == NAMESPACE
    # Everything else is unchanged by the dependency.
    assert len(on) == len(off) + 1
