"""Least privilege, checked on the rendered RBAC: the operator's effective permissions are exactly the API calls it
makes, per namespace and cluster-wide, the shared workload ServiceAccount has none, the operator holds every permission
of the per-run Roles it creates (no escalate or bind needed), and no Role in any configuration uses a wildcard."""

from __future__ import annotations

from itertools import product
from typing import Any

import pytest
from chart_toggles import TOGGLES
from conftest import NAMESPACE, RELEASE, find
from kubeforge.builders.access import build_run_access
from kubeforge.constants import KINDS as KUBEFORGE_KINDS

Triple = tuple[str, str, str, str]  # (apiGroup, resource, verb, resource name or "*" for all)
CLUSTER = "<cluster>"

KINDS = ("datapipelines", "trainingjobs", "modeldeployments")


def triples(groups: list[str], resources: list[str], verbs: list[str], names: tuple[str, ...] = ("*",)) -> set[Triple]:
    return set(product(groups, resources, verbs, names))


# The API calls the operator makes (docs/install.md lists them): in every namespace it watches ...
OPERATOR_NAMESPACED = (
    triples(["kubeforge.dev"], list(KINDS), ["get", "list", "watch", "patch"])
    | triples(["kubeforge.dev"], [f"{k}/status" for k in KINDS], ["get", "patch"])
    # No delete: the children go with their resource by owner-reference garbage collection (docs/operator.md).
    | triples(["ray.io"], ["rayjobs", "rayservices"], ["get", "list", "watch", "create", "patch"])
    # kopf posts core v1 Events (kopf/_cogs/clients/events.py: a POST, never a patch, never events.k8s.io).
    | triples([""], ["events"], ["create"])
    | triples(["monitoring.coreos.com"], ["podmonitors", "servicemonitors"], ["get", "create", "patch", "delete"])
    # Each run's ServiceAccount, Role and RoleBinding (builders/access.py): created, read back after a 409; no delete
    # (owner references), no patch (never changed after creation).
    | triples([""], ["serviceaccounts"], ["get", "create"])
    | triples(["rbac.authorization.k8s.io"], ["roles", "rolebindings"], ["get", "create"])
)
# ... and on cluster-scoped resources.
OPERATOR_CRD_READ = triples(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["get", "list", "watch"])
# kopf peering: watch the peering kind, heartbeat (patch) only into the operator's own object `kubeforge`
# (kopf/_core/engines/peering.py: a watcher on the kind, and patch_obj on settings.peering.name).
PEERING_CLUSTER = triples(["kopf.dev"], ["clusterkopfpeerings"], ["list", "watch"]) | triples(
    ["kopf.dev"], ["clusterkopfpeerings"], ["get", "patch"], ("kubeforge",)
)
PEERING_NAMESPACED = triples(["kopf.dev"], ["kopfpeerings"], ["list", "watch"]) | triples(
    ["kopf.dev"], ["kopfpeerings"], ["get", "patch"], ("kubeforge",)
)

ROLE_KINDS = ("Role", "ClusterRole")
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "update", "deletecollection"}


def rule_triples(rules: list[dict[str, Any]]) -> set[Triple]:
    out: set[Triple] = set()
    for rule in rules:
        assert "nonResourceURLs" not in rule, rule
        out |= triples(rule["apiGroups"], rule["resources"], rule["verbs"], tuple(rule.get("resourceNames", ["*"])))
    return out


def permissions(docs: list[dict[str, Any]], sa_name: str, sa_namespace: str) -> dict[str, set[Triple]]:
    """{namespace or CLUSTER: permissions} a ServiceAccount gets from the rendered bindings."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs if d["kind"] in ROLE_KINDS
    }
    granted: dict[str, set[Triple]] = {}
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subject = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        role_ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, f"{binding['kind']}/{binding['metadata']['name']} refers to a missing {ref}"
        scope = CLUSTER if binding["kind"] == "ClusterRoleBinding" else binding["metadata"]["namespace"]
        granted.setdefault(scope, set()).update(rule_triples(role["rules"]))
    return granted


OPERATOR_SA = f"{RELEASE}-kubeforge"


# No namespaces access: kopf 1.45 lists namespaces only when it is not cluster-wide (kopf/_core/reactor/observation.py,
# namespace_observer), and in namespaced mode falls back to the exact names it is given.
CLUSTER_MODE = OPERATOR_NAMESPACED | OPERATOR_CRD_READ | PEERING_CLUSTER


@pytest.mark.parametrize("toggle", ["defaults", "no-peering-object"])
def test_cluster_mode_operator_permissions(render, toggle: str) -> None:
    """The operator peers whenever kopf's CRDs exist, so it needs the peering rules even without our object."""
    got = permissions(render(TOGGLES[toggle]), OPERATOR_SA, NAMESPACE)
    assert got == {CLUSTER: CLUSTER_MODE}


@pytest.mark.parametrize("toggle", ["namespaced", "no-peering-object-namespaced"])
def test_namespaced_mode_operator_permissions(render, toggle: str) -> None:
    """Roles per watched namespace; cluster-wide only the CRD reads kopf needs (no namespaces, nothing else)."""
    values = TOGGLES[toggle]
    got = permissions(render(values), OPERATOR_SA, NAMESPACE)
    expected = {ns: OPERATOR_NAMESPACED | PEERING_NAMESPACED for ns in values["watchNamespaces"]}
    assert got == {**expected, CLUSTER: OPERATOR_CRD_READ}


def test_existing_operator_service_account_gets_the_same_permissions(render) -> None:
    got = permissions(render(TOGGLES["existing-service-account"]), "platform-operator", NAMESPACE)
    assert got == {CLUSTER: CLUSTER_MODE}


def test_rbac_create_false_renders_no_operator_rbac(render) -> None:
    docs = render(TOGGLES["no-rbac"])
    assert permissions(docs, OPERATOR_SA, NAMESPACE) == {}
    assert not [
        d
        for d in docs
        if d["kind"] in ROLE_KINDS and d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]


@pytest.mark.parametrize(
    ("toggle", "sa", "namespaces"),
    [
        ("defaults", "kubeforge-workload", [NAMESPACE]),
        ("workload-namespaces", "trainer", ["runs-a", "runs-b"]),
        ("namespaced", "kubeforge-workload", ["team-a", "team-b"]),
        ("namespaced-workload-namespaces", "kubeforge-workload", ["team-a-runs"]),
    ],
)
def test_the_shared_workload_service_account_has_no_permissions(
    render, toggle: str, sa: str, namespaces: list[str]
) -> None:
    """Each run gets its own Role for its own status from the operator; the shared account gets nothing."""
    docs = render(TOGGLES[toggle])
    for ns in namespaces:
        assert find(docs, "ServiceAccount", sa, ns), f"no workload ServiceAccount in {ns}"
        assert permissions(docs, sa, ns) == {}
    assert not [
        d for d in docs if d["kind"] in (*ROLE_KINDS, "RoleBinding") and d["metadata"]["name"].endswith("-workload")
    ]


def test_the_shared_workload_service_account_can_be_left_out(render) -> None:
    docs = render(TOGGLES["no-workload-identity"])
    assert not find(docs, "ServiceAccount", "kubeforge-workload")


def run_role_permissions(kind: str, namespace: str) -> set[Triple]:
    """What a run's Role (operator/kubeforge/builders/access.py) grants."""
    objects = build_run_access(kind, "run", namespace, None)
    [role] = [o for o in objects if o["kind"] == "Role"]
    return rule_triples(role["rules"])


def covered(held: set[Triple], wanted: set[Triple]) -> bool:
    """Whether every wanted permission is held, by name or for all names ("*")."""
    return all(t in held or (*t[:3], "*") in held for t in wanted)


@pytest.mark.parametrize("toggle", ["defaults", "namespaced"])
def test_the_operator_holds_every_permission_of_the_run_roles_it_creates(render, toggle: str) -> None:
    """Kubernetes lets the operator create a Role, and a RoleBinding to it, only with permissions it holds itself
    (RBAC privilege-escalation prevention) unless it has escalate/bind, which it does not get."""
    values = TOGGLES[toggle]
    got = permissions(render(values), OPERATOR_SA, NAMESPACE)
    for ns in values.get("watchNamespaces") or ["any-namespace"]:
        held = got.get(ns, set()) | got.get(CLUSTER, set())
        for kind in KUBEFORGE_KINDS:
            assert covered(held, run_role_permissions(kind, ns)), (ns, kind)
    # Not vacuous: without the status rules the check fails.
    held = {t for t in got.get(CLUSTER, set()) if not t[1].endswith("/status")}
    if held:
        assert not covered(held, run_role_permissions("TrainingJob", "x"))


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_no_wildcards_or_dangerous_verbs(render, toggle: str) -> None:
    """No Role or ClusterRole in any configuration grants '*', secrets, or verbs that escalate."""
    roles = [d for d in render(TOGGLES[toggle]) if d["kind"] in ROLE_KINDS]
    for role in roles:
        name = f"{role['kind']}/{role['metadata']['name']}"
        assert "aggregationRule" not in role, name
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"], f"{name}: wildcard apiGroup"
            assert not any("*" in r for r in rule["resources"]), f"{name}: wildcard resource"
            assert "nonResourceURLs" not in rule, f"{name}: non-resource URLs"
            assert "secrets" not in rule["resources"], f"{name}: secrets"
            is_user_role = role["metadata"]["name"].endswith(("-edit", "-view"))
            forbidden = {"*", "escalate", "bind", "impersonate"} if is_user_role else FORBIDDEN_VERBS
            assert not forbidden & set(rule["verbs"]), f"{name}: {forbidden & set(rule['verbs'])}"


def test_user_roles_aggregate_into_the_default_roles(render) -> None:
    docs = render()
    edit = find(docs, "ClusterRole", f"{RELEASE}-kubeforge-edit")[0]
    view = find(docs, "ClusterRole", f"{RELEASE}-kubeforge-view")[0]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    # People edit specs; status belongs to the operator and the workloads.
    assert rule_triples(edit["rules"]) == triples(
        ["kubeforge.dev"],
        list(KINDS),
        ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
    ) | triples(["kubeforge.dev"], [f"{k}/status" for k in KINDS], ["get"])
    assert rule_triples(view["rules"]) == triples(["kubeforge.dev"], list(KINDS), ["get", "list", "watch"]) | triples(
        ["kubeforge.dev"], [f"{k}/status" for k in KINDS], ["get"]
    )
    docs = render(TOGGLES["no-aggregated-roles"])
    assert not find(docs, "ClusterRole", f"{RELEASE}-kubeforge-edit")


def test_permission_check_detects_extra_rules(render) -> None:
    """The exact-match check is not vacuous: one extra verb on a rendered Role changes the result."""
    docs = render()
    (role,) = find(docs, "ClusterRole", OPERATOR_SA)
    role["rules"][0]["verbs"].append("delete")
    assert permissions(docs, OPERATOR_SA, NAMESPACE) != {CLUSTER: CLUSTER_MODE}
    # ... and so does dropping the resourceNames restriction of the peering heartbeat.
    docs = render()
    (role,) = find(docs, "ClusterRole", OPERATOR_SA)
    for rule in role["rules"]:
        rule.pop("resourceNames", None)
    assert permissions(docs, OPERATOR_SA, NAMESPACE) != {CLUSTER: CLUSTER_MODE}


def test_a_namespaced_operator_gets_no_access_to_namespaces(render) -> None:
    """Exact watchNamespaces are served without listing namespaces (kopf's scanning is off), so nothing grants it."""
    docs = render(TOGGLES["namespaced"])
    for doc in docs:
        if doc["kind"] in ROLE_KINDS:
            for rule in doc.get("rules") or []:
                assert "namespaces" not in rule["resources"], (doc["metadata"]["name"], rule)
