"""The quickstart's cluster overlay (examples/quickstart-cluster): rendered by kustomize (kubectl's, offline), it is
the local quickstart with every location an object-store URI that all Ray pods reach, and valid kubeforge."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubeforge.local.resources import URI_FIELDS
from kubeforge.validate import validate_document

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize built in)")


def render(directory: Path) -> dict[str, dict]:
    text = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text) if doc}


def locations(kind: str, doc: dict) -> list[str]:
    found = []
    for path in URI_FIELDS[kind]:
        node: object = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str):
            found.append(node)
    return found


def test_the_cluster_overlay_is_the_quickstart_with_object_store_locations() -> None:
    local = {
        doc["kind"]: doc
        for p in sorted((EXAMPLES / "quickstart").glob("*.yaml"))
        for doc in [yaml.safe_load(p.read_text())]
    }
    assert render(EXAMPLES / "quickstart") == local, "the base is exactly the local quickstart"
    cluster = render(EXAMPLES / "quickstart-cluster")
    assert set(cluster) == set(local) == {"DataPipeline", "TrainingJob", "ModelDeployment"}
    for kind, doc in cluster.items():
        resource, problems = validate_document(f"{kind}.yaml", doc)
        assert resource is not None, [str(p) for p in problems]
        assert all(uri.startswith(("s3://", "gs://")) for uri in locations(kind, doc)), locations(kind, doc)
    assert cluster["DataPipeline"]["spec"]["output"]["uri"] == "s3://kubeforge-quickstart/quickstart/data"
    assert cluster["TrainingJob"]["spec"]["checkpoint"]["uri"] == "s3://kubeforge-quickstart/quickstart/checkpoints"
    # Only the locations differ from the local quickstart.
    cluster["DataPipeline"]["spec"]["output"]["uri"] = local["DataPipeline"]["spec"]["output"]["uri"]
    cluster["TrainingJob"]["spec"]["checkpoint"]["uri"] = local["TrainingJob"]["spec"]["checkpoint"]["uri"]
    assert cluster == local
