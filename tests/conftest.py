"""Suite-wide test settings: where the repository and the shared KubeRay CRDs are."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_leftovers import stop_ray_leftovers

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _no_ray_leftovers() -> Iterator[None]:
    """After each module (its Ray fixtures torn down first): stop what shut-down local Ray sessions left behind."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and not ray.is_initialized():
        stop_ray_leftovers()


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


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP (moto's server, installed by scripts/setup-s3.sh) on a free port, with the AWS_*
    variables that pyarrow.fs reads pointing at it; start it before any Ray its tests use (workers inherit them)."""
    # The venv scripts/setup-s3.sh installs into (KUBEFORGE_S3_VENV moves both).
    server = Path(os.environ.get("KUBEFORGE_S3_VENV", REPO_ROOT / ".venv-s3")) / "bin" / "moto_server"
    if not server.is_file():
        pytest.fail(f"no S3 server at {server}: run scripts/setup-s3.sh (scripts/dev test does)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except urllib.error.HTTPError:  # it answers: up
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the S3 server {server} did not start on {url}")
                time.sleep(0.2)
        env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield url
    finally:
        process.terminate()
        process.wait(10)


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
