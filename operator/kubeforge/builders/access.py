"""Pure builders of a run's own identity: a ServiceAccount, a Role that may read its resource and get/patch only
that resource's status (resourceNames), and the RoleBinding between them (docs/operator.md, trust boundary)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..constants import GROUP, KINDS
from .common import child_labels, run_access_name, run_service_account

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"


def _metadata(kind: str, name: str, namespace: str) -> dict[str, Any]:
    return {"name": run_access_name(kind, name), "namespace": namespace, "labels": child_labels(kind, name)}


def build_run_service_account(
    kind: str, name: str, namespace: str, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The run's ServiceAccount; annotations come from the chart's template (cloud identity: IRSA, GKE WI ...)."""
    metadata = _metadata(kind, name, namespace)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def build_run_role(kind: str, name: str, namespace: str) -> dict[str, Any]:
    """A Role that may read the run's own resource and get/patch its status, and nothing else."""
    plural = KINDS[kind][0]
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(kind, name, namespace),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{plural}/status"],
                "resourceNames": [name],
                "verbs": ["get", "patch"],
            },
            {"apiGroups": [GROUP], "resources": [plural], "resourceNames": [name], "verbs": ["get"]},
        ],
    }


def build_run_role_binding(kind: str, name: str, namespace: str, service_account: str) -> dict[str, Any]:
    """Binds the run's Role to the ServiceAccount its Ray pods use."""
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _metadata(kind, name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": run_access_name(kind, name)},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }


def build_run_access(
    kind: str,
    name: str,
    namespace: str,
    spec_service_account: str | None,
    annotations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A run's identity objects in creation order: its ServiceAccount (unless spec.serviceAccountName names one),
    Role and RoleBinding."""
    objects = [] if spec_service_account else [build_run_service_account(kind, name, namespace, annotations)]
    account = run_service_account(kind, name, spec_service_account)
    return [*objects, build_run_role(kind, name, namespace), build_run_role_binding(kind, name, namespace, account)]
