"""examples/gitops: the Argo CD Applications and Flux objects point at paths that exist and carry the settings the
docs promise; the training run is valid kubeforge; the Argo CD health checks (Lua, run in a Lua 5.1 interpreter as
Argo CD's gopher-lua is) and the Flux CEL health checks give the same verdict on the same resource states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from conftest import REPO_ROOT, parse_manifests
from kubeforge.validate import validate_paths

GITOPS = REPO_ROOT / "examples" / "gitops"
REPO_URL = "https://github.com/kubeforge/kubeforge.git"
KINDS = ("DataPipeline", "TrainingJob", "ModelDeployment")


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(GITOPS.rglob("*.yaml")) for d in load(p) if d.get("kind") == kind]


def test_every_example_parses() -> None:
    files = sorted(GITOPS.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in load(path):
            assert {"apiVersion", "kind"} <= set(doc), path


def _kustomize_resources(directory: Path) -> list[Path]:
    """Files a kustomization.yaml includes (recursively through directories), checking each exists."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out = []
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{entry}: a directory needs its own kustomization.yaml"
            out += _kustomize_resources(target)
        else:
            # kustomize only loads files inside the kustomization's root.
            assert directory.resolve() in target.parents, f"{entry} is outside {directory}"
            out.append(target)
    return out


@pytest.mark.parametrize("directory", ["training-run", "namespaces", "flux/operator"])
def test_kustomizations_resolve(directory: str) -> None:
    assert _kustomize_resources(GITOPS / directory)


def test_training_run_is_valid_kubeforge() -> None:
    files = _kustomize_resources(GITOPS / "training-run")
    report = validate_paths(files)
    assert [str(p) for p in report.problems] == []
    assert sorted(m.kind for m in report.manifests) == ["DataPipeline", "TrainingJob"]
    kustomization = yaml.safe_load((GITOPS / "training-run" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "kubeforge-runs"
    # Object storage every Ray pod can reach, not a pod-local path.
    for manifest in report.manifests:
        text = yaml.safe_dump(manifest.raw)
        assert "runs/quickstart" not in text and "s3://" in text


def _values_of_argo_app(app: dict[str, Any]) -> dict[str, Any]:
    (chart_source,) = [s for s in app["spec"]["sources"] if s["path"] == "charts/kubeforge"]
    return chart_source["helm"]["valuesObject"]


def test_argocd_applications() -> None:
    apps = {d["metadata"]["name"]: d for _, d in by_kind("Application")}
    assert set(apps) == {"kubeforge", "gitops-gpt"}
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1"
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
        sources = app["spec"].get("sources") or [app["spec"]["source"]]
        for source in sources:
            assert source["repoURL"] == REPO_URL
            assert (REPO_ROOT / source["path"]).is_dir(), source["path"]
    operator = apps["kubeforge"]
    assert operator["spec"]["destination"]["namespace"] == "kubeforge-system"
    assert "CreateNamespace=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    run = apps["gitops-gpt"]
    assert run["spec"]["source"]["path"] == "examples/gitops/training-run"
    assert run["spec"]["destination"]["namespace"] == "kubeforge-runs"


def test_flux_objects() -> None:
    (repo,) = [d for _, d in by_kind("GitRepository")]
    assert repo["apiVersion"] == "source.toolkit.fluxcd.io/v1" and repo["spec"]["url"] == REPO_URL
    kustomizations = {
        d["metadata"]["name"]: d for _, d in by_kind("Kustomization") if d["apiVersion"].startswith("kustomize.toolkit")
    }
    assert set(kustomizations) == {"kubeforge-operator", "gitops-gpt"}
    for ks in kustomizations.values():
        assert ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
        assert ks["spec"]["sourceRef"] == {"kind": "GitRepository", "name": repo["metadata"]["name"]}
        assert (REPO_ROOT / ks["spec"]["path"]).is_dir(), ks["spec"]["path"]
        assert ks["spec"]["prune"] is True
    run = kustomizations["gitops-gpt"]
    assert run["spec"]["dependsOn"] == [{"name": "kubeforge-operator"}]
    assert run["spec"]["wait"] is True
    assert {e["kind"] for e in run["spec"]["healthCheckExprs"]} == set(KINDS)
    (release,) = [d for _, d in by_kind("HelmRelease")]
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert (REPO_ROOT / chart["chart"]).resolve() == (REPO_ROOT / "charts" / "kubeforge").resolve()
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"


def test_gitops_chart_values_are_valid_and_create_the_workload_identity(chart) -> None:
    """The values in the Argo CD Application and the Flux HelmRelease pass the chart's schema and put the workload
    ServiceAccount in the namespace of the training run."""
    (app,) = [d for _, d in by_kind("Application") if d["metadata"]["name"] == "kubeforge"]
    (release,) = [d for _, d in by_kind("HelmRelease")]
    for values in (_values_of_argo_app(app), release["spec"]["values"]):
        chart.validate_schema(values)
        docs = parse_manifests(chart.render(values, name="kubeforge", namespace="kubeforge-system"))
        assert any(
            d["kind"] == "ServiceAccount" and d["metadata"] == {**d["metadata"], "namespace": "kubeforge-runs"}
            for d in docs
        )


# --- Health checks -------------------------------------------------------------------------------------------------


def _argo_health_scripts() -> dict[str, str]:
    (cm,) = load(GITOPS / "argocd" / "argocd-cm-health.yaml")
    prefix = "resource.customizations.health.kubeforge.dev_"
    scripts = {key.removeprefix(prefix): value for key, value in cm["data"].items() if key.startswith(prefix)}
    assert set(scripts) == set(KINDS)
    return scripts


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def resource(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": kind, "metadata": {"name": "x", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


# (kind, resource, Argo CD health, Flux verdict); Flux has no Suspended: it waits ("inProgress").
SCENARIOS = [
    ("TrainingJob", resource("TrainingJob", None), "Progressing", "inProgress"),
    (
        "TrainingJob",
        resource("TrainingJob", {"phase": "Pending", "observedGeneration": 1}),
        "Progressing",
        "inProgress",
    ),
    (
        "TrainingJob",
        resource(
            "TrainingJob",
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [cond("Progressing", "True", "Training", "step 40/300")],
            },
        ),
        "Progressing",
        "inProgress",
    ),
    (
        "TrainingJob",
        resource(
            "TrainingJob",
            {
                "phase": "Succeeded",
                "observedGeneration": 1,
                "conditions": [cond("Ready", "True", "Succeeded", "model at s3://m")],
            },
        ),
        "Healthy",
        "current",
    ),
    (
        "TrainingJob",
        resource(
            "TrainingJob",
            {"phase": "Failed", "observedGeneration": 1, "conditions": [cond("Failed", "True", "RayJobFailed", "OOM")]},
        ),
        "Degraded",
        "failed",
    ),
    (
        "TrainingJob",
        resource(
            "TrainingJob",
            {"phase": "Suspended", "observedGeneration": 1, "conditions": [cond("Suspended", "True", "Suspended")]},
        ),
        "Suspended",
        "inProgress",
    ),
    (
        "TrainingJob",
        resource(
            "TrainingJob",
            {"phase": "Succeeded", "observedGeneration": 1, "conditions": [cond("Ready", "True", "Succeeded")]},
            generation=2,
        ),
        "Progressing",
        "inProgress",
    ),
    (
        "DataPipeline",
        resource(
            "DataPipeline",
            {"phase": "Succeeded", "observedGeneration": 3, "conditions": [cond("Ready", "True", "Succeeded")]},
            generation=3,
        ),
        "Healthy",
        "current",
    ),
    (
        "DataPipeline",
        resource(
            "DataPipeline",
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [cond("Ready", "False", "Running", "12000 rows")],
            },
        ),
        "Progressing",
        "inProgress",
    ),
    (
        "DataPipeline",
        resource(
            "DataPipeline",
            {"phase": "Failed", "observedGeneration": 1, "conditions": [cond("Failed", "True", "ValidationFailed")]},
        ),
        "Degraded",
        "failed",
    ),
    (
        "ModelDeployment",
        resource(
            "ModelDeployment",
            {
                "phase": "Ready",
                "observedGeneration": 1,
                "conditions": [cond("Ready", "True", "Serving", "2/2 replicas")],
            },
        ),
        "Healthy",
        "current",
    ),
    (
        "ModelDeployment",
        resource(
            "ModelDeployment",
            {"phase": "Deploying", "observedGeneration": 1, "conditions": [cond("Ready", "False", "Deploying")]},
        ),
        "Progressing",
        "inProgress",
    ),
    (
        "ModelDeployment",
        resource(
            "ModelDeployment",
            {"phase": "Degraded", "observedGeneration": 1, "conditions": [cond("Ready", "False", "Degraded", "1/2")]},
        ),
        "Degraded",
        "inProgress",
    ),
    (
        "ModelDeployment",
        resource(
            "ModelDeployment",
            {"phase": "Failed", "observedGeneration": 1, "conditions": [cond("Failed", "True", "ModelNotFound")]},
        ),
        "Degraded",
        "failed",
    ),
]


@pytest.fixture(scope="module")
def lua():
    lupa = pytest.importorskip("lupa.lua51", reason="lupa (Lua 5.1, as Argo CD's gopher-lua) is not installed")
    return lupa.LuaRuntime(unpack_returned_tuples=True)


def argo_health(lua, script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script)
    return hs["status"], hs["message"]


@pytest.mark.parametrize(("kind", "obj", "argo", "flux"), SCENARIOS)
def test_argocd_health(lua, kind: str, obj: dict[str, Any], argo: str, flux: str) -> None:
    status, message = argo_health(lua, _argo_health_scripts()[kind], obj)
    assert status == argo
    assert isinstance(message, str) and message
    conditions = obj.get("status", {}).get("conditions", [])
    for c in conditions:
        if c["message"] and c["type"] in ("Failed", "Ready", "Progressing") and c["status"] == "True":
            assert message == c["message"]


def test_argocd_job_kinds_share_one_check() -> None:
    scripts = _argo_health_scripts()
    assert scripts["DataPipeline"] == scripts["TrainingJob"]


def _flux_exprs() -> dict[str, dict[str, Any]]:
    (run,) = [d for _, d in by_kind("Kustomization") if d.get("metadata", {}).get("name") == "gitops-gpt"]
    env = celpy.Environment()
    out = {}
    for entry in run["spec"]["healthCheckExprs"]:
        out[entry["kind"]] = {
            key: env.program(env.compile(entry[key])) for key in ("current", "failed", "inProgress") if key in entry
        }
        assert entry["apiVersion"] == "kubeforge.dev/v1alpha1"
    return out


def flux_verdict(programs: dict[str, Any], obj: dict[str, Any]) -> str:
    """kustomize-controller's order: inProgress, then failed, then current; otherwise the object is in progress."""
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for verdict in ("inProgress", "failed", "current"):
        if verdict in programs and bool(programs[verdict].evaluate(activation)):
            return verdict
    return "inProgress"


@pytest.mark.parametrize(("kind", "obj", "argo", "flux"), SCENARIOS)
def test_flux_health(kind: str, obj: dict[str, Any], argo: str, flux: str) -> None:
    assert flux_verdict(_flux_exprs()[kind], obj) == flux
