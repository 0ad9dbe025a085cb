"""The optional NetworkPolicy over kubeforge's Ray pods: off by default; when on, one per workload namespace that
selects only kubeforge's Ray pods and admits, per port, only the peers templates/networkpolicy.yaml names."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from chart_toggles import TOGGLES
from conftest import NAMESPACE, find, one


def test_off_by_default(render: Any) -> None:
    assert find(render(), "NetworkPolicy") == []


def test_one_policy_per_workload_namespace_valid_for_kubernetes(render: Any) -> None:
    policies = find(render(TOGGLES["network-policy"]), "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["runs-a", "runs-b"]
    for policy in policies:
        kubernetes_validate.validate(policy, "1.30", strict=True)


def test_it_admits_only_the_named_peers_on_their_ports(render: Any) -> None:
    policy = one(render(TOGGLES["network-policy-serve-from"]), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "kubeforge"}
    assert spec["policyTypes"] == ["Ingress"]
    rules = {tuple(sorted(p["port"] for p in rule.get("ports", []))): rule.get("from") for rule in spec["ingress"]}
    # Ray pods of kubeforge workloads: every port.
    assert rules[()] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "kubeforge"}}}]
    # Dashboard / job submission and the dashboard agent: the submitter, the kubeforge operator, KubeRay.
    control = rules[(8265, 52365)]
    assert {
        "podSelector": {"matchExpressions": [{"key": "batch.kubernetes.io/job-name", "operator": "Exists"}]}
    } in control
    operator = next(peer for peer in control if "namespaceSelector" in peer and "matchLabels" in peer["podSelector"])
    assert operator["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "kf"
    assert {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
    } in control
    assert len(control) == 3
    # Metrics: Prometheus only, as configured (Helm merges the given namespaceSelector into the default peer).
    assert rules[(8080,)] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    # Serve: the configured callers.
    assert rules[(8000,)] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert len(spec["ingress"]) == 4


def test_serve_is_open_to_all_when_no_callers_are_named(render: Any) -> None:
    policy = find(render(TOGGLES["network-policy"]), "NetworkPolicy")[0]
    serve = [rule for rule in policy["spec"]["ingress"] if [p["port"] for p in rule.get("ports", [])] == [8000]]
    assert serve == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
