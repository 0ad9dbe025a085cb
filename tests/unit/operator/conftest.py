"""Fixtures of the operator's pure unit tests: the quickstart resources as the API server returns them, settings,
and the KubeRay schemas (read once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubeforge.config import OperatorConfig
from support.schemas import load_validators


@pytest.fixture()
def config() -> OperatorConfig:
    """Operator settings with recognisable values."""
    return OperatorConfig(
        trainer_image="registry.example/kubeforge/trainer:1.2.3",
        ray_version="2.60.0",
        serve_port=8000,
    )


@pytest.fixture(scope="session")
def kuberay_validators(kuberay_crds_dir: Path) -> dict[str, Any]:
    """jsonschema validators of the KubeRay RayJob and RayService CRDs (../shared/kuberay-crds)."""
    return load_validators(kuberay_crds_dir)
