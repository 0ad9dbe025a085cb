"""Fixtures of the operator's integration tests: the real operator (kopf, real HTTP) against the stateful Kubernetes
API emulator, and a client that plays the user (kubectl) and KubeRay (patching the children's status)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import EmulatorServer
from support.cluster import Cluster
from support.schemas import load_validators


@pytest.fixture(scope="session")
def kuberay_validators(kuberay_crds_dir: Path) -> dict[str, Any]:
    """jsonschema validators of the KubeRay CRDs (read once per session)."""
    return load_validators(kuberay_crds_dir)


@pytest.fixture()
def cluster(kuberay_validators: dict[str, Any]) -> Iterator[Cluster]:
    """A fresh emulated cluster with the operator running against it; both are stopped afterwards."""
    with EmulatorServer() as server:
        cluster = Cluster(server, kuberay_validators)
        cluster.start_operator()
        try:
            yield cluster
        finally:
            cluster.stop_operator()
