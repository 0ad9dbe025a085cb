"""The manifests we ship (examples/), as tests use them: each passed through `kubeforge validate` first, which judges
them as the API server and the operator would — so a shipped manifest the CRDs would reject fails the test that uses
it, rather than passing on the emulator (which stores whatever it is sent)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
from kubeforge.validate import Manifest, validate_paths

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "examples" / "quickstart"
GITOPS = REPO_ROOT / "examples" / "gitops"
FINETUNE = REPO_ROOT / "examples" / "finetune"


def validated(*paths: Path) -> list[Manifest]:
    """The kubeforge manifests under paths; fails the calling test with validate's lines if any is invalid."""
    report = validate_paths(paths)
    if report.problems:
        pytest.fail("shipped manifests the API server would reject:\n" + "\n".join(map(str, report.problems)))
    return report.manifests


@functools.cache
def _quickstart() -> dict[str, dict[str, Any]]:
    return {m.kind: m.raw for m in validated(QUICKSTART)}


def quickstart_manifest(kind: str) -> dict[str, Any]:
    """A copy of examples/quickstart's manifest of that kind, as shipped and validated."""
    return copy.deepcopy(_quickstart()[kind])
