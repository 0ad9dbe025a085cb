"""docs/install.md and docs/gitops.md exist and stay in step with the chart, the operator settings and the examples."""

from __future__ import annotations

import re

import pytest
from conftest import CHART_DIR, REPO_ROOT
from kubeforge.config import ENV_VARS

INSTALL = REPO_ROOT / "docs" / "install.md"
GITOPS = REPO_ROOT / "docs" / "gitops.md"


@pytest.mark.parametrize(
    "heading", ["## Install", "## Upgrade", "## Uninstall", "## Namespaced mode", "### Workload identity", "## Images"]
)
def test_install_doc_sections(heading: str) -> None:
    assert re.search(rf"^{re.escape(heading)}\b", INSTALL.read_text(), re.MULTILINE), heading


def test_install_doc_lists_every_operator_setting() -> None:
    text = INSTALL.read_text()
    missing = [name for name in ENV_VARS if f"`{name}" not in text]
    assert missing == []


def test_install_doc_covers_every_top_level_value(chart) -> None:
    text = INSTALL.read_text()
    missing = [key for key in chart.values if f"`{key}" not in text]
    assert missing == []


def test_install_doc_upgrade_applies_crds_server_side() -> None:
    text = INSTALL.read_text()
    upgrade = text.split("## Upgrade", 1)[1].split("\n## ", 1)[0]
    assert "kubectl apply --server-side -f charts/kubeforge/crds/" in upgrade
    assert upgrade.index("kubectl apply --server-side") < upgrade.index("helm upgrade")


def test_gitops_doc_points_at_existing_examples() -> None:
    text = GITOPS.read_text()
    for path in re.findall(r"examples/gitops/[\w./-]+", text):
        assert (REPO_ROOT / path.rstrip(".")).exists(), path
    for kind in ("DataPipeline", "TrainingJob", "ModelDeployment"):
        assert f"kubeforge.dev_{kind}" in (REPO_ROOT / "examples/gitops/argocd/argocd-cm-health.yaml").read_text()
    assert "ServerSideApply=true" in text and "healthCheckExprs" in text


def test_notes_and_docs_agree_on_the_chart_path() -> None:
    notes = (CHART_DIR / "templates" / "NOTES.txt").read_text()
    assert "charts/kubeforge/crds/" in notes and "docs/install.md" in notes
