"""charts/kubeforge rendered by the real Helm engine, with default values and with every documented toggle: every object
is valid against the Kubernetes OpenAPI schemas (custom resources against their own schemas), and the operator
Deployment, Service, ServiceMonitor and peering objects are what the operator needs."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_toggles import DIGEST, TOGGLES
from conftest import CHART_DIR, NAMESPACE, RELEASE, REPO_ROOT, find, one
from kubeforge.cli import COMMANDS, build_parser, cmd_operator
from kubeforge.config import ENV_VARS, OperatorConfig

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())

# A minimal schema of the ServiceMonitor fields this chart writes, after the Prometheus Operator API
# (monitoring.coreos.com/v1 ServiceMonitorSpec / Endpoint). It is not the full CRD, which is not available offline;
# unknown fields are rejected so that a misspelt field fails here as it would be pruned by the API server.
_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def _crd_schemas(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """{(apiVersion, kind): openAPIV3Schema} of the CRDs in a file."""
    out = {}
    for crd in yaml.safe_load_all(path.read_text()):
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            out[key] = version["schema"]["openAPIV3Schema"]
    return out


CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
    **_crd_schemas(CHART_DIR / "crds" / "kopf.dev_peerings.yaml"),
}


_VALID: set[str] = set()  # objects already found valid: many value sets render identical ones


def validate_object(doc: dict[str, Any]) -> None:
    """Validate one rendered object: built-in kinds with kubernetes-validate (strict), custom ones by schema."""
    text = json.dumps(doc, sort_keys=True)
    if text in _VALID:
        return
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_SCHEMAS:
        jsonschema.validate(doc, CUSTOM_SCHEMAS[key])
    else:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    _VALID.add(text)


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_every_rendered_object_is_valid(render, toggle: str) -> None:
    docs = render(TOGGLES[toggle])
    assert docs, "nothing rendered"
    for doc in docs:
        try:
            validate_object(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{toggle}: {doc['kind']}/{doc['metadata'].get('name')}: {exc}".splitlines()[0])
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{toggle}: no schema for {doc['apiVersion']} {doc['kind']}: add one to CUSTOM_SCHEMAS")


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_objects_are_unique_and_namespaced_correctly(render, toggle: str) -> None:
    docs = render(TOGGLES[toggle])
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "Namespace"}
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {sorted(keys)}"
    for kind, namespace, name in keys:
        if kind in cluster_scoped:
            assert namespace is None, f"{kind}/{name} is cluster-scoped but has a namespace"
        else:
            assert namespace, f"{kind}/{name} has no namespace (GitOps tools need it explicit)"
        assert len(name) <= 63 or kind in cluster_scoped, f"{kind}/{name} name too long"


def test_every_documented_toggle_is_exercised(chart) -> None:
    """Every boolean in values.yaml is flipped by at least one value set above (the security contexts are Kubernetes
    objects passed through, not toggles; their hardened defaults are checked by test_operator_pod_is_hardened)."""
    passthrough = {"podSecurityContext", "securityContext"}

    def booleans(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], bool]:
        if isinstance(node, bool):
            return {path: node}
        if isinstance(node, dict):
            return {k: v for key, sub in node.items() for k, v in booleans(sub, (*path, key)).items()}
        return {}

    def lookup(values: dict[str, Any], path: tuple[str, ...]) -> Any:
        for key in path:
            if not isinstance(values, dict) or key not in values:
                return None
            values = values[key]
        return values

    defaults = {p: v for p, v in booleans(chart.values).items() if p[0] not in passthrough}
    assert len(defaults) >= 8, defaults  # serviceAccount.create, rbac.*, workload.*, peering, metrics.*, kuberay
    unflipped = [
        ".".join(path)
        for path, default in defaults.items()
        if not any(lookup(values, path) is (not default) for values in TOGGLES.values())
    ]
    assert not unflipped, f"no test value set flips: {unflipped}"


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"] if "value" in e}


def test_operator_deployment_defaults(render) -> None:
    docs = render()
    deployment = one(docs, "Deployment", f"{RELEASE}-kubeforge", NAMESPACE)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    container = _container(docs)
    assert container["image"] == "ghcr.io/kubeforge/operator:0.1.0"
    assert container["command"] == ["kubeforge"]
    assert container["args"] == ["operator"]
    # kopf's liveness endpoint, on the port the operator is told to serve it on.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert probe["periodSeconds"] > 0 and probe["failureThreshold"] >= 1
    assert "readinessProbe" not in container
    # Resources: requests, and a memory limit.
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    # The operator's own ServiceAccount, rendered by the chart.
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount", f"{RELEASE}-kubeforge")["metadata"]["name"]
    # kopf identifies itself by POD_ID.
    pod_id = next(e for e in container["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_operator_command_is_accepted_by_the_cli(render, toggle: str) -> None:
    """The container's command line parses with the real `kubeforge` CLI into the operator command."""
    container = _container(render(TOGGLES[toggle]))
    assert container["command"] == ["kubeforge"]
    args = build_parser(COMMANDS).parse_args(container["args"])
    assert args.func is cmd_operator


def _restricted_pss_violations(pod: dict[str, Any]) -> list[str]:
    """Violations of the Kubernetes Pod Security Standard "restricted" (the checks that apply to this pod)."""
    problems = []
    pod_sc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is set")
    for volume in pod.get("volumes", []):
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected"}
        if not set(volume) - {"name"} <= allowed:
            problems.append(f"volume {volume['name']} has a restricted type")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{c['name']}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{c['name']}: runs as uid 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: seccompProfile is {seccomp}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{c['name']}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{c['name']}: adds capabilities {caps['add']}")
    return problems


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_operator_pod_is_hardened(render, toggle: str) -> None:
    docs = render(TOGGLES[toggle])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert _restricted_pss_violations(pod) == []
    container = _container(docs)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root filesystem leaves /tmp writable through an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_restricted_check_catches_a_weakened_pod(render) -> None:
    """The hardening check above is not vacuous: values that weaken the pod are reported."""
    # Helm merges values into the defaults; null removes a default key.
    weakened = {
        "allowPrivilegeEscalation": None,
        "runAsNonRoot": False,
        "capabilities": {"drop": None, "add": ["SYS_ADMIN"]},
    }
    docs = render({"securityContext": weakened})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    problems = _restricted_pss_violations(pod)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("runAsNonRoot is not true" in p for p in problems)
    assert any("capabilities do not drop ALL" in p for p in problems)
    assert any("adds capabilities" in p for p in problems)


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_operator_env_is_what_the_operator_reads(render, toggle: str) -> None:
    """The chart sets every KUBEFORGE_* variable of operator/kubeforge/config.py, and nothing it does not read."""
    values = TOGGLES[toggle]
    container = _container(render(values))
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    kubeforge_vars = {n for n in names if n.startswith("KUBEFORGE_")}
    assert kubeforge_vars == set(ENV_VARS)
    config = OperatorConfig.from_env(_env(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.metrics_port == ports["metrics"]
    assert config.health_port == ports["health"]
    assert config.watch_namespaces == tuple(values.get("watchNamespaces", ()))
    # The workload annotations are the template of every run's own ServiceAccount.
    expected = values.get("workload", {}).get("serviceAccount", {}).get("annotations", {})
    assert dict(config.run_service_account_annotations) == expected


def test_operator_settings_reach_the_operator(render) -> None:
    values = TOGGLES["operator-settings"]
    container = _container(render(values))
    config = OperatorConfig.from_env(_env(container))
    assert config.log_level == "DEBUG"
    assert config.requeue_seconds == 2.5
    assert config.serve_port == 9000
    assert (config.metrics_port, config.health_port) == (9090, 9091)
    assert config.trainer_image == "ghcr.io/kubeforge/trainer:0.1.0"
    assert config.ray_version == "2.60.0"
    assert container["args"] == ["operator"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"} in container["env"]


def test_images_by_tag_and_digest(render) -> None:
    container = _container(render(TOGGLES["images-by-digest"]))
    assert container["image"] == f"ghcr.io/kubeforge/operator@{DIGEST}"
    assert container["imagePullPolicy"] == "Always"
    assert OperatorConfig.from_env(_env(container)).trainer_image == f"ghcr.io/kubeforge/trainer@{DIGEST}"
    docs = render(TOGGLES["images-by-digest"])
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    container = _container(render(TOGGLES["images-by-tag"]))
    assert container["image"] == "registry.example.com/ml/kubeforge-operator:0.1.0-rc.1"
    trainer = OperatorConfig.from_env(_env(container)).trainer_image
    assert trainer == "registry.example.com/ml/kubeforge-trainer:0.1.0-cpu"


def test_scheduling_values_reach_the_pod(render) -> None:
    values = TOGGLES["scheduling"]
    docs = render(values)
    deployment = one(docs, "Deployment", "kubeforge-operator")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == values[key]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert template["metadata"]["labels"]["team"] == "ml"
    container = pod["containers"][0]
    assert container["resources"] == values["resources"]
    assert container["livenessProbe"]["failureThreshold"] == 6


def test_metrics_service_selects_the_operator_pod(render) -> None:
    docs = render()
    service = one(docs, "Service", f"{RELEASE}-kubeforge-metrics", NAMESPACE)
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == 8080
    assert not find(docs, "ServiceMonitor"), "the ServiceMonitor is optional and off by default"
    assert not find(render(TOGGLES["no-metrics-service"]), "Service")


def test_service_monitor_scrapes_the_metrics_service(render) -> None:
    docs = render(TOGGLES["service-monitor"])
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor", f"{RELEASE}-kubeforge", NAMESPACE)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"], endpoint["honorLabels"]) == ("15s", "5s", True)
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    assert service["metadata"]["annotations"] == {"example.com/scrape": "true"}


def test_minimal_service_monitor_schema_rejects_mistakes(render) -> None:
    """The ServiceMonitor check is not vacuous: a misspelt field or a bad duration fails it."""
    monitor = one(render(TOGGLES["service-monitor"]), "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    bad = yaml.safe_load(yaml.safe_dump(monitor))
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SERVICE_MONITOR_SCHEMA)
    bad = yaml.safe_load(yaml.safe_dump(monitor))
    bad["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SERVICE_MONITOR_SCHEMA)


def test_kubernetes_validation_is_strict(render) -> None:
    """kubernetes-validate runs in strict mode: a misspelt field in a rendered Deployment fails."""
    deployment = one(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbee"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def _operator_peering_name() -> str:
    """PEERING_NAME of operator/kubeforge/controller.py, read without importing (importing registers handlers)."""
    tree = ast.parse((REPO_ROOT / "operator" / "kubeforge" / "controller.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PEERING_NAME"]:
            return ast.literal_eval(node.value)
    raise AssertionError("operator/kubeforge/controller.py defines no PEERING_NAME")


def test_peering_cluster_mode(render) -> None:
    docs = render()
    peering = one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == _operator_peering_name() == "kubeforge"
    assert not find(docs, "KopfPeering")


def test_peering_namespaced_mode(render) -> None:
    docs = render(TOGGLES["namespaced"])
    peerings = find(docs, "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("team-a", _operator_peering_name()),
        ("team-b", _operator_peering_name()),
    ]
    assert not find(docs, "ClusterKopfPeering")


def test_no_peering_object(render) -> None:
    for toggle in ("no-peering-object", "no-peering-object-namespaced"):
        docs = render(TOGGLES[toggle])
        assert not find(docs, "ClusterKopfPeering") and not find(docs, "KopfPeering")


def test_namespaced_mode(render) -> None:
    values = TOGGLES["namespaced"]
    docs = render(values)
    config = OperatorConfig.from_env(_env(_container(docs)))
    assert config.watch_namespaces == ("team-a", "team-b")
    for ns in values["watchNamespaces"]:
        one(docs, "Role", f"{RELEASE}-kubeforge", ns)
        one(docs, "RoleBinding", f"{RELEASE}-kubeforge", ns)
        one(docs, "ServiceAccount", "kubeforge-workload", ns)
    assert not find(docs, "ServiceAccount", "kubeforge-workload", NAMESPACE)


def test_existing_operator_service_account(render) -> None:
    docs = render(TOGGLES["existing-service-account"])
    assert not find(docs, "ServiceAccount", "platform-operator")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    subjects = one(docs, "ClusterRoleBinding", f"{RELEASE}-kubeforge")["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": "platform-operator", "namespace": NAMESPACE}]


def test_service_account_annotations(render) -> None:
    docs = render(TOGGLES["service-account-annotations"])
    sa = one(docs, "ServiceAccount", "kubeforge-operator", NAMESPACE)
    assert sa["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}


def test_workload_service_account_per_namespace(render) -> None:
    values = TOGGLES["workload-namespaces"]
    docs = render(values)
    for ns in ("runs-a", "runs-b"):
        sa = one(docs, "ServiceAccount", "trainer", ns)
        assert sa["metadata"]["annotations"] == values["workload"]["serviceAccount"]["annotations"]
    assert not find(docs, "ServiceAccount", "trainer", NAMESPACE)
    docs = render(TOGGLES["no-workload-identity"])
    assert not find(docs, "ServiceAccount", "kubeforge-workload")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-workload")]
    # Every toggle with workload annotations hands them to the operator for the runs' ServiceAccounts.
    config = OperatorConfig.from_env(_env(_container(render(values))))
    assert dict(config.run_service_account_annotations) == values["workload"]["serviceAccount"]["annotations"]


def test_no_kuberay_objects_without_the_dependency(render) -> None:
    """From a checkout without `helm dependency build` the subchart is absent: enabling it adds no stray objects."""
    assert len(render(TOGGLES["kuberay"])) == len(render())


def test_notes(render_notes) -> None:
    notes = render_notes()
    assert "Mode: cluster-wide" in notes
    assert 'kopf peering: on (ClusterKopfPeering "kubeforge")' in notes
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}-kubeforge" in notes
    assert "kubectl apply --server-side -f charts/kubeforge/crds/" in notes
    notes = render_notes({"watchNamespaces": ["team-a", "team-b"]})
    assert "Mode: namespaced. The operator watches only: team-a, team-b" in notes
    assert 'kopf peering: on (KopfPeering "kubeforge")' in notes
    assert "no peering object" in render_notes(TOGGLES["no-peering-object"])
