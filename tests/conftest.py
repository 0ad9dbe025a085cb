"""Suite-wide test settings: where the repository and the shared KubeRay CRDs are."""

from __future__ import annotations

import logging
import os
import sys
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


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without interpreter finalisation once Ray has run in it, keeping pytest's exit status.

    The Ray tiers start and stop a local Ray several times in this one process; ray.shutdown leaves Ray's native io
    threads (gcs_client_io_service, worker.io, gRPC) running, and finalising the interpreter under them segfaulted
    once after every test had passed (exit 139). Restarting Ray in one process is unsafe upstream
    (ray-project/ray#31145); everything pytest reports is written by now, so nothing is lost by skipping that teardown.
    """
    if "ray" not in sys.modules:
        return
    status = getattr(config, "_kubeforge_exitstatus", None)
    if status is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember the session's exit status for pytest_unconfigure."""
    session.config._kubeforge_exitstatus = exitstatus  # type: ignore[attr-defined]
