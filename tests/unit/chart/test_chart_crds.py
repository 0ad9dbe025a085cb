"""The CRDs in charts/kubeforge/crds/: identical to crds/ and to what the API models generate, valid
apiextensions.k8s.io/v1 objects, friendly to server-side apply; kopf's peering CRDs as kopf needs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import CHART_DIR, REPO_ROOT
from kubeforge.api import RESOURCE_MODELS
from kubeforge.api.crdgen import build_crd, crd_files
from kubeforge.constants import GROUP

CHART_CRDS = CHART_DIR / "crds"
ROOT_CRDS = REPO_ROOT / "crds"
PEERING_FILE = "kopf.dev_peerings.yaml"
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_chart_crds() -> list[dict[str, Any]]:
    return [doc for path in sorted(CHART_CRDS.glob("*.yaml")) for doc in _docs(path)]


def test_chart_crds_are_identical_to_crds_dir() -> None:
    root = {p.name: p.read_bytes() for p in ROOT_CRDS.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml") if p.name != PEERING_FILE}
    assert set(chart) == set(root), "charts/kubeforge/crds/ and crds/ hold different kubeforge CRD files"
    for name in root:
        assert chart[name] == root[name], f"{name} differs; run `kubeforge crds`"
    # The only other file is kopf's peering CRDs.
    assert {p.name for p in CHART_CRDS.iterdir()} == set(root) | {PEERING_FILE}


def test_chart_crds_match_the_models() -> None:
    """Byte-identical to what `kubeforge crds` generates from operator/kubeforge/api."""
    chart = {p.name: p.read_text() for p in CHART_CRDS.glob(f"{GROUP}_*.yaml")}
    assert chart == crd_files(), "run `kubeforge crds`"
    kinds = {d["spec"]["names"]["kind"] for d in all_chart_crds() if d["spec"]["group"] == GROUP}
    assert kinds == set(RESOURCE_MODELS)


def test_helm_sees_the_crds(chart) -> None:
    names = sorted(Path(c["filename"]).name for c in chart.crds)
    assert names == sorted(p.name for p in CHART_CRDS.glob("*.yaml"))


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crds_are_valid_custom_resource_definitions(version: str) -> None:
    for crd in all_chart_crds():
        kubernetes_validate.validate(crd, version, strict=True)


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", all_chart_crds(), ids=lambda c: c["metadata"]["name"])
def test_crds_work_with_server_side_apply(crd: dict[str, Any]) -> None:
    """Nothing in the manifests that a server-side apply would fight over or that the server owns."""
    assert set(crd) == {"apiVersion", "kind", "metadata", "spec"}, "no status or other server-owned fields"
    assert set(crd["metadata"]) == {"name"}, "no creationTimestamp, resourceVersion, uid or managedFields"
    for version in crd["spec"]["versions"]:
        for path, node in _walk(version["schema"]["openAPIV3Schema"]):
            if node.get("x-kubernetes-list-type") == "map":
                keys = node["x-kubernetes-list-map-keys"]
                item = node["items"]
                for key in keys:
                    # The API server requires list-map keys to be required or defaulted.
                    assert key in item.get("required", []) or "default" in item["properties"][key], (path, key)


@pytest.mark.parametrize("kind", list(RESOURCE_MODELS))
def test_conditions_merge_by_type(kind: str) -> None:
    """status.conditions is a list-map keyed by type, so the operator and workloads patch conditions independently."""
    crd = build_crd(kind)
    conditions = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_kopf_peering_crds() -> None:
    docs = {d["spec"]["names"]["kind"]: d for d in _docs(CHART_CRDS / PEERING_FILE)}
    assert set(docs) == {"ClusterKopfPeering", "KopfPeering"}
    expected = {
        "ClusterKopfPeering": ("clusterkopfpeerings.kopf.dev", "Cluster", "clusterkopfpeerings"),
        "KopfPeering": ("kopfpeerings.kopf.dev", "Namespaced", "kopfpeerings"),
    }
    for kind, (name, scope, plural) in expected.items():
        crd = docs[kind]
        assert (crd["metadata"]["name"], crd["spec"]["scope"], crd["spec"]["names"]["plural"]) == (name, scope, plural)
        assert crd["spec"]["group"] == "kopf.dev"
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        # kopf writes its peers into .status through the main resource: a status subresource would drop them.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
