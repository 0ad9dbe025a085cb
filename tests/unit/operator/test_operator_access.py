"""A run's own identity (builders/access.py): exact manifests, names, and the Ray pods' ServiceAccount."""

from __future__ import annotations

import pytest
from kubeforge.builders.access import build_run_access
from kubeforge.builders.common import run_access_name
from kubeforge.config import OperatorConfig

LABELS = {
    "app.kubernetes.io/managed-by": "kubeforge",
    "app.kubernetes.io/part-of": "kubeforge",
    "kubeforge.dev/trainingjob": "gpt",
}
IRSA = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/train"}


def test_a_run_gets_a_service_account_a_role_for_its_own_status_and_their_binding() -> None:
    objects = build_run_access("TrainingJob", "gpt", "ml", None, IRSA)
    meta = {"name": "kubeforge-tj-gpt", "namespace": "ml", "labels": LABELS}
    assert objects == [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**meta, "annotations": IRSA}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": ["kubeforge.dev"],
                    "resources": ["trainingjobs/status"],
                    "resourceNames": ["gpt"],
                    "verbs": ["get", "patch"],
                },
                {
                    "apiGroups": ["kubeforge.dev"],
                    "resources": ["trainingjobs"],
                    "resourceNames": ["gpt"],
                    "verbs": ["get"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeforge-tj-gpt"},
            "subjects": [{"kind": "ServiceAccount", "name": "kubeforge-tj-gpt", "namespace": "ml"}],
        },
    ]


def test_spec_service_account_gets_the_role_bound_and_no_new_account() -> None:
    objects = build_run_access("DataPipeline", "corpus", "ml", "team-a-trainer", IRSA)
    assert [o["kind"] for o in objects] == ["Role", "RoleBinding"]
    assert objects[0]["rules"][0]["resources"] == ["datapipelines/status"]
    assert objects[1]["subjects"] == [{"kind": "ServiceAccount", "name": "team-a-trainer", "namespace": "ml"}]


def test_no_annotations_means_none_on_the_service_account() -> None:
    account = build_run_access("ModelDeployment", "chat", "ml", None)[0]
    assert account["metadata"]["name"] == "kubeforge-md-chat"
    assert "annotations" not in account["metadata"]


def test_names_are_per_kind_and_long_names_stay_valid_and_distinct() -> None:
    assert run_access_name("DataPipeline", "x") != run_access_name("TrainingJob", "x")
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    assert len(run_access_name("TrainingJob", long_a)) == 253
    assert run_access_name("TrainingJob", long_a) != run_access_name("TrainingJob", long_b)


def test_annotations_setting_is_parsed_or_refused_with_its_name() -> None:
    env = {"KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS": '{"iam.gke.io/gcp-service-account": "t@p.iam"}'}
    config = OperatorConfig.from_env(env)
    assert dict(config.run_service_account_annotations) == {"iam.gke.io/gcp-service-account": "t@p.iam"}
    assert OperatorConfig.from_env({}).run_service_account_annotations == ()
    for bad in ("{not json", '["a"]', '{"a": 1}'):
        with pytest.raises(ValueError, match="KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS"):
            OperatorConfig.from_env({"KUBEFORGE_RUN_SERVICE_ACCOUNT_ANNOTATIONS": bad})
