"""Suite-wide test settings: where the repository and the shared KubeRay CRDs are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def kuberay_crds_dir() -> Path:
    """The KubeRay CRDs shared beside the checkout (../shared/kuberay-crds), or $KUBERAY_CRDS_DIR."""
    path = Path(os.environ.get("KUBERAY_CRDS_DIR", REPO_ROOT.parent / "shared" / "kuberay-crds"))
    if not (path / "ray.io_rayjobs.yaml").is_file():
        pytest.fail(f"KubeRay CRDs not found in {path}: clone with shared/ beside it or set KUBERAY_CRDS_DIR")
    return path
