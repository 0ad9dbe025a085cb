"""values.yaml and values.schema.json: in sync, fully commented, and wrong values are rejected with messages that name
the key and the rule (Helm validates the schema at install and upgrade)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import CHART_DIR, RELEASE, helm_python

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
# Settings whose value is a Kubernetes object (or its timings), documented as a whole by one comment.
KUBERNETES_OBJECTS = {("resources",), ("livenessProbe",)}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"imagee": {"tag": "x"}}, "additional properties 'imagee' not allowed"),
        ({"operator": {"logLeve": "INFO"}}, "additional properties 'logLeve' not allowed"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"watchNamespaces": ["team-a", "team-a"]}, "at '/watchNamespaces'"),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces'"),
        ({"operator": {"logLevel": "VERBOSE"}}, "at '/operator/logLevel': value must be one of"),
        ({"operator": {"metricsPort": 70000}}, "at '/operator/metricsPort'"),
        ({"operator": {"requeueSeconds": 0}}, "at '/operator/requeueSeconds'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"image": {"digest": "latest"}}, "at '/image/digest'"),
        ({"trainer": {"rayVersion": "latest"}}, "at '/trainer/rayVersion'"),
        ({"trainer": {"head": {"memory": "lots"}}}, "at '/trainer/head/memory'"),
        ({"peering": {"enabled": "yes"}}, "at '/peering/enabled'"),
        ({"workload": {"serviceAccount": {"name": ""}}}, "at '/workload/serviceAccount/name'"),
        ({"workload": {"namespaces": ["Runs"]}}, "at '/workload/namespaces/0'"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "at '/metrics/serviceMonitor/interval'"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "at '/resources/requests/cpu'"),
        ({"kuberay": {"enabled": "true"}}, "at '/kuberay/enabled'"),
    ],
)
def test_schema_rejects_bad_values(chart, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.validate_schema(values)
    assert expected in str(err.value)
    # Rendering (as `helm install` does) rejects them too.
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name=RELEASE, namespace="kubeforge-system")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"operator": {"metricsPort": 8081}}, "operator.metricsPort and operator.healthPort must differ"),
        (
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        (
            {"operator": {"extraEnv": [{"name": "KUBEFORGE_LOG_LEVEL", "value": "DEBUG"}]}},
            "operator.extraEnv must not set KUBEFORGE_LOG_LEVEL",
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name must name an existing ServiceAccount"),
    ],
)
def test_templates_reject_inconsistent_values(chart, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as err:
        chart.render(values, name=RELEASE, namespace="kubeforge-system")
    assert expected in str(err.value)


def test_defaults_and_kuberay_passthrough_are_valid(chart) -> None:
    chart.validate_schema(chart.values)
    # Keys other than `enabled` under kuberay belong to the KubeRay chart and pass through.
    chart.validate_schema({"kuberay": {"enabled": True, "image": {"tag": "v1.7.1"}, "watchNamespace": ["a"]}})


def _schema_paths(node: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key the schema defines as a chart setting (free-form Kubernetes objects are leaves)."""
    out = set()
    for key, sub in node.get("properties", {}).items():
        out.add((*path, key))
        if sub.get("additionalProperties") is False and (*path, key) not in KUBERNETES_OBJECTS:
            out |= _schema_paths(sub, (*path, key))
    return out


def _value_paths(node: Any, path: tuple[str, ...] = (), schema_paths: set[tuple[str, ...]] | None = None) -> set:
    out = set()
    if isinstance(node, dict):
        for key, sub in node.items():
            child = (*path, key)
            if schema_paths is not None and child not in schema_paths:
                continue
            out.add(child)
            out |= _value_paths(sub, child, schema_paths)
    return out


def test_schema_and_values_define_the_same_settings(chart) -> None:
    schema_paths = _schema_paths(SCHEMA) - {("global",)}
    value_paths = _value_paths(chart.values, schema_paths=schema_paths | {("kuberay", "enabled")})
    assert schema_paths - value_paths == set(), "settings in the schema but not in values.yaml"
    assert SCHEMA["additionalProperties"] is False


def test_values_yaml_is_fully_commented(chart) -> None:
    """Every setting of values.yaml has a comment on the line(s) right above it."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    settings = _schema_paths(SCHEMA) - {("global",)}
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        path = tuple(key for _, key in stack)
        if path not in settings:
            continue  # inside a Kubernetes object given as a default (resources, securityContext, ...)
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("#"):
            undocumented.append(".".join(path))
    assert undocumented == []
