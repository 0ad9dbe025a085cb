"""Pure builders of RayJobs, RayServices and monitors: exact manifests, passthrough of every scheduling field, and
validation of everything generated against the real KubeRay CRD schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubeforge.api import DataPipeline, ModelDeployment, TrainingJob
from kubeforge.builders import (
    ResolvedModel,
    build_monitor,
    build_rayjob,
    build_rayservice,
    child_name,
    serve_url,
    spec_hash,
)
from kubeforge.builders.common import MAX_RAY_NAME_LENGTH
from kubeforge.builders.rayjob import build_retry
from kubeforge.config import OperatorConfig
from support.manifests import quickstart_body
from support.schemas import pod_template_errors, schema_errors

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
POD_OVERRIDES = {
    "env": [
        {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
    "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
    "volumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
    "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
}
"""spec.pod of a resource reading a MinIO bucket with static credentials and a private CA."""


def typed(body: dict[str, Any]) -> Any:
    """The typed model of a body."""
    model = {"DataPipeline": DataPipeline, "TrainingJob": TrainingJob, "ModelDeployment": ModelDeployment}
    return model[body["kind"]].model_validate(body)


def runtime_env(rayjob: dict[str, Any]) -> dict[str, str]:
    """The env_vars of a RayJob's runtimeEnvYAML."""
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]


def gpu_trainingjob() -> dict[str, Any]:
    """A TrainingJob with GPUs and every scheduling field set."""
    body = quickstart_body("TrainingJob")
    body["spec"].update(
        workers={"count": 4, "cpu": "8", "memory": "64Gi", "gpu": 2},
        nodeSelector={"cloud.example/pool": "a100"},
        tolerations=[TOLERATION],
        priorityClassName="training-high",
        queueName="team-a",
        serviceAccountName="team-a-trainer",
        image="registry.example/custom:7",
        suspend=True,
        ttlSecondsAfterFinished=600,
    )
    return body


def test_datapipeline_rayjob_is_exactly_the_expected_manifest(config: OperatorConfig) -> None:
    body = quickstart_body("DataPipeline")
    rayjob = build_rayjob(typed(body), config, raw_spec=body["spec"])
    labels = {
        "app.kubernetes.io/managed-by": "kubeforge",
        "app.kubernetes.io/part-of": "kubeforge",
        "kubeforge.dev/datapipeline": "quickstart-corpus",
    }
    resources = {"cpu": "1", "memory": "2Gi"}

    restricted = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }

    def template(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": "kubeforge-dp-quickstart-corpus",
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {
                        "name": name,
                        "image": "registry.example/kubeforge/trainer:1.2.3",
                        "resources": {"requests": resources, "limits": resources},
                        "ports": ports,
                        "securityContext": restricted,
                        "volumeMounts": [
                            {"name": "kf-tmp", "mountPath": "/tmp"},
                            {"name": "kf-home", "mountPath": "/home/kubeforge"},
                            {"name": "kf-dshm", "mountPath": "/dev/shm"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "kf-tmp", "emptyDir": {}},
                    {"name": "kf-home", "emptyDir": {}},
                    # Half of the 2Gi limit: Ray's object store (30% by default) and DeepSpeed's shm collective.
                    {"name": "kf-dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1024Mi"}},
                ],
            },
        }

    expected = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": "quickstart-corpus-data",
            "namespace": "ml",
            "labels": labels,
            "annotations": {"kubeforge.dev/spec-hash": spec_hash(body["spec"]), "kubeforge.dev/attempt": "0"},
        },
        "spec": {
            "entrypoint": "python -m kubeforge_trainer data",
            "runtimeEnvYAML": rayjob["spec"]["runtimeEnvYAML"],  # checked below
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 0,
            "backoffLimit": 0,
            "suspend": False,
            "rayClusterSpec": {
                "rayVersion": "2.60.0",
                "authOptions": {"mode": "token"},
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},
                    "template": template(
                        "ray-head",
                        [
                            {"name": "gcs-server", "containerPort": 6379},
                            {"name": "dashboard", "containerPort": 8265},
                            {"name": "client", "containerPort": 10001},
                            {"name": "metrics", "containerPort": 8080},
                        ],
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": 2,
                        "minReplicas": 2,
                        "maxReplicas": 2,
                        "rayStartParams": {},
                        "template": template("ray-worker", [{"name": "metrics", "containerPort": 8080}]),
                    }
                ],
            },
        },
    }
    assert rayjob == expected
    env = runtime_env(rayjob)
    assert set(env) == {
        "KUBEFORGE_RESOURCE",
        "KUBEFORGE_RESOURCE_KIND",
        "KUBEFORGE_RESOURCE_NAME",
        "KUBEFORGE_RESOURCE_NAMESPACE",
    }
    assert env["KUBEFORGE_RESOURCE_KIND"] == "DataPipeline"
    assert env["KUBEFORGE_RESOURCE_NAME"] == "quickstart-corpus"
    assert env["KUBEFORGE_RESOURCE_NAMESPACE"] == "ml"
    document = json.loads(env["KUBEFORGE_RESOURCE"])
    assert document["apiVersion"] == "kubeforge.dev/v1alpha1" and document["kind"] == "DataPipeline"
    assert document["metadata"] == {
        "name": "quickstart-corpus",
        "namespace": "ml",
        "uid": "uid-datapipeline",
        "generation": 1,
    }
    # The workload gets the validated spec with every default filled in; it parses as the typed model.
    assert DataPipeline.model_validate(document).spec == typed(body).spec


def test_trainingjob_rayjob_runs_training_with_the_data_location_and_sized_workers(config: OperatorConfig) -> None:
    body = quickstart_body("TrainingJob")
    rayjob = build_rayjob(typed(body), config, raw_spec=body["spec"], data_uri="s3://bucket/corpus")
    assert rayjob["metadata"]["name"] == "quickstart-gpt-train"
    assert rayjob["metadata"]["labels"]["kubeforge.dev/trainingjob"] == "quickstart-gpt"
    assert rayjob["spec"]["entrypoint"] == "python -m kubeforge_trainer train"
    env = runtime_env(rayjob)
    assert env["KUBEFORGE_DATA_URI"] == "s3://bucket/corpus"
    assert json.loads(env["KUBEFORGE_RESOURCE"])["spec"]["checkpoint"]["resume"] is True  # the quickstart default
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (2, 2, 2)


def test_gpus_and_scheduling_fields_reach_every_ray_pod(config: OperatorConfig) -> None:
    body = gpu_trainingjob()
    rayjob = build_rayjob(typed(body), config, raw_spec=body["spec"], data_uri="s3://d")
    cluster = rayjob["spec"]["rayClusterSpec"]
    worker = cluster["workerGroupSpecs"][0]
    assert worker["replicas"] == 4
    resources = worker["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == resources["limits"]
    head_resources = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources["limits"]
    for pod in (cluster["headGroupSpec"]["template"], worker["template"]):
        spec = pod["spec"]
        assert spec["nodeSelector"] == {"cloud.example/pool": "a100"}
        assert spec["tolerations"] == [TOLERATION]
        assert spec["priorityClassName"] == "training-high"
        assert spec["serviceAccountName"] == "team-a-trainer"
        assert spec["containers"][0]["image"] == "registry.example/custom:7"
    # Kueue admits through the RayJob's queue label and its suspend field.
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kueue.x-k8s.io/queue-name" not in worker["template"]["metadata"]["labels"]
    assert rayjob["spec"]["suspend"] is True
    assert rayjob["spec"]["ttlSecondsAfterFinished"] == 600
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


def test_a_pvc_source_is_mounted_read_only_in_every_ray_pod(config: OperatorConfig) -> None:
    body = quickstart_body("DataPipeline")
    body["spec"]["source"] = {"pvc": {"claimName": "corpus", "path": "/raw"}, "format": "text"}
    rayjob = build_rayjob(typed(body), config, raw_spec=body["spec"])
    cluster = rayjob["spec"]["rayClusterSpec"]
    for pod in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        volumes = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert volumes == [{"name": "kf-source", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}}]
        mounts = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "kf-source"]
        assert mounts == [{"name": "kf-source", "mountPath": "/mnt/kubeforge/pvc/corpus", "readOnly": True}]


def test_a_retry_copies_the_failed_attempt_and_resumes_from_the_checkpoint(config: OperatorConfig) -> None:
    body = quickstart_body("TrainingJob")
    body["spec"]["checkpoint"]["resume"] = False
    first = build_rayjob(typed(body), config, raw_spec=body["spec"], data_uri="s3://d")
    assert json.loads(runtime_env(first)["KUBEFORGE_RESOURCE"])["spec"]["checkpoint"]["resume"] is False
    stored = {**first, "metadata": {**first["metadata"], "uid": "x", "resourceVersion": "9"}, "status": {"failed": 1}}
    retry = build_retry(stored, "TrainingJob", "quickstart-gpt", 1)
    assert retry["metadata"]["name"] == "quickstart-gpt-train-r1"
    assert retry["metadata"]["annotations"] == {
        "kubeforge.dev/spec-hash": first["metadata"]["annotations"]["kubeforge.dev/spec-hash"],
        "kubeforge.dev/attempt": "1",
    }
    assert "status" not in retry and "uid" not in retry["metadata"]
    env = runtime_env(retry)
    assert env["KUBEFORGE_DATA_URI"] == "s3://d"
    assert json.loads(env["KUBEFORGE_RESOURCE"])["spec"]["checkpoint"]["resume"] is True
    assert retry["spec"]["rayClusterSpec"] == first["spec"]["rayClusterSpec"]
    # Built from the spec (e.g. when the failed RayJob is gone), a retry resumes too.
    rebuilt = build_rayjob(typed(body), config, raw_spec=body["spec"], data_uri="s3://d", attempt=2)
    assert rebuilt["metadata"]["name"] == "quickstart-gpt-train-r2"
    assert json.loads(runtime_env(rebuilt)["KUBEFORGE_RESOURCE"])["spec"]["checkpoint"]["resume"] is True


@pytest.mark.parametrize(
    ("kind", "name", "attempt", "expected"),
    [
        ("TrainingJob", "gpt", 0, "gpt-train"),
        ("TrainingJob", "gpt", 3, "gpt-train-r3"),
        ("DataPipeline", "gpt", 0, "gpt-data"),
        ("ModelDeployment", "gpt", 0, "gpt"),
        ("TrainingJob", "7b-run", 0, "kf-7b-run-train"),
    ],
)
def test_child_names_are_deterministic_and_distinct_per_kind(kind: str, name: str, attempt: int, expected: str) -> None:
    assert child_name(kind, name, attempt) == expected


def test_long_names_are_shortened_with_a_hash_to_fit_kuberay() -> None:
    long_a, long_b = "a" * 60 + "-one", "a" * 60 + "-two"
    name_a, name_b = child_name("TrainingJob", long_a, 12), child_name("TrainingJob", long_b, 12)
    assert len(name_a) <= MAX_RAY_NAME_LENGTH and len(name_b) <= MAX_RAY_NAME_LENGTH
    assert name_a != name_b and name_a.endswith("-train-r12")
    assert child_name("TrainingJob", long_a, 12) == name_a


def test_spec_hash_ignores_suspend_only() -> None:
    spec = {"training": {"maxSteps": 10}, "suspend": False}
    assert spec_hash(spec) == spec_hash({**spec, "suspend": True})
    assert spec_hash(spec) != spec_hash({**spec, "training": {"maxSteps": 11}})


def test_rayservice_serves_the_model_and_splits_traffic_with_the_canary(config: OperatorConfig) -> None:
    body = quickstart_body("ModelDeployment")
    body["spec"]["canary"] = {"modelUri": "s3://models/b", "trafficPercent": 25}
    body["spec"]["replicas"] = {"min": 1, "max": 3}
    rayservice = build_rayservice(
        typed(body), config, model=ResolvedModel("s3://models/a", "v1"), canary=ResolvedModel("s3://models/b", "v2")
    )
    assert rayservice["metadata"]["name"] == "quickstart-gpt"
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve["http_options"] == {"host": "0.0.0.0", "port": 8000}
    [app] = serve["applications"]
    assert app["import_path"] == "kubeforge_trainer.serve:build_app"
    assert app["route_prefix"] == "/"
    args = app["args"]
    assert (args["modelUri"], args["modelVersion"]) == ("s3://models/a", "v1")
    assert (args["canaryModelUri"], args["canaryModelVersion"]) == ("s3://models/b", "v2")
    assert args["resource"]["spec"]["canary"]["trafficPercent"] == 25
    assert args["resource"]["metadata"]["name"] == "quickstart-gpt"
    assert app["runtime_env"]["env_vars"]["KUBEFORGE_RESOURCE_KIND"] == "ModelDeployment"
    cluster = rayservice["spec"]["rayClusterConfig"]
    workers = cluster["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 6)  # room for both versions
    assert cluster["enableInTreeAutoscaling"] is True
    ports = {p["name"]: p["containerPort"] for p in workers["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"metrics": 8080, "serve": 8000}
    assert serve_url("quickstart-gpt", "ml", 8000) == "http://quickstart-gpt-serve-svc.ml.svc.cluster.local:8000"


def test_rayservice_without_canary_has_no_canary_args_and_a_fixed_size(config: OperatorConfig) -> None:
    body = quickstart_body("ModelDeployment")
    rayservice = build_rayservice(typed(body), config, model=ResolvedModel("s3://models/a"))
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert "canaryModelUri" not in args and args["modelVersion"] == ""
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False
    changed = build_rayservice(typed(body), config, model=ResolvedModel("s3://models/other"))
    hash_key = "kubeforge.dev/spec-hash"
    assert changed["metadata"]["annotations"][hash_key] != rayservice["metadata"]["annotations"][hash_key]


def test_direct_ingress_configures_every_ray_container_and_keeps_the_serve_port(config: OperatorConfig) -> None:
    body = quickstart_body("ModelDeployment")
    plain = build_rayservice(typed(body), config, model=ResolvedModel("s3://models/a"))
    body["spec"]["ingress"] = "direct"
    direct = build_rayservice(typed(body), config, model=ResolvedModel("s3://models/a"))
    cluster = direct["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]
    ]
    expected = [
        {"name": "RAY_SERVE_ENABLE_DIRECT_INGRESS", "value": "1"},
        {"name": "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "value": "8000"},
        {"name": "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "value": "8000"},
    ]
    assert [c.get("env") for c in containers] == [expected, expected]
    # KubeRay's Service still targets the serve port, where each worker's replica now answers itself.
    ports = {p["name"]: p["containerPort"] for p in containers[1]["ports"]}
    assert ports["serve"] == 8000
    plain_cluster = plain["spec"]["rayClusterConfig"]
    assert "env" not in plain_cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    key = "kubeforge.dev/spec-hash"
    assert direct["metadata"]["annotations"][key] != plain["metadata"]["annotations"][key], "a change rolls out"


@pytest.mark.parametrize("kind", ["PodMonitor", "ServiceMonitor"])
def test_monitor_selects_the_deployments_ray_pods(kind: str, config: OperatorConfig) -> None:
    body = quickstart_body("ModelDeployment")
    body["spec"]["monitoring"] = {"enabled": True, "kind": kind, "interval": "15s", "labels": {"release": "prom"}}
    monitor = build_monitor(typed(body))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == kind
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"] == {"matchLabels": {"kubeforge.dev/modeldeployment": "quickstart-gpt"}}
    endpoints = monitor["spec"]["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]
    assert endpoints == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    rayservice = build_rayservice(typed(body), config, model=ResolvedModel("s3://m"))
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    pod_labels = head["template"]["metadata"]["labels"]
    selected = (
        head.get("headService", {}).get("metadata", {}).get("labels", {}) if kind == "ServiceMonitor" else pod_labels
    )
    assert selected["kubeforge.dev/modeldeployment"] == "quickstart-gpt"


def generated_children(config: OperatorConfig) -> list[dict[str, Any]]:
    """One of each kind of child in its plain and its most loaded form."""
    dp = quickstart_body("DataPipeline")
    pvc = quickstart_body("DataPipeline")
    pvc["spec"]["source"] = {"pvc": {"claimName": "corpus"}}
    tj, gpu = quickstart_body("TrainingJob"), gpu_trainingjob()
    s3 = quickstart_body("DataPipeline")
    s3["spec"]["pod"] = POD_OVERRIDES
    md, canary, direct = (quickstart_body("ModelDeployment") for _ in range(3))
    direct["spec"]["ingress"] = "direct"
    canary["spec"].update(
        pod=POD_OVERRIDES,
        canary={"modelUri": "s3://b", "trafficPercent": 10},
        monitoring={"enabled": True, "kind": "ServiceMonitor"},
        nodeSelector={"pool": "cpu"},
        tolerations=[TOLERATION],
        suspend=True,
    )
    first = build_rayjob(typed(tj), config, raw_spec=tj["spec"], data_uri="s3://d")
    return [
        build_rayjob(typed(dp), config, raw_spec=dp["spec"]),
        build_rayjob(typed(pvc), config, raw_spec=pvc["spec"]),
        build_rayjob(typed(s3), config, raw_spec=s3["spec"]),
        first,
        build_rayjob(typed(gpu), config, raw_spec=gpu["spec"], data_uri="s3://d", attempt=2),
        build_retry(first, "TrainingJob", "quickstart-gpt", 1),
        build_rayservice(typed(md), config, model=ResolvedModel("s3://a")),
        build_rayservice(typed(direct), config, model=ResolvedModel("s3://a")),
        build_rayservice(typed(canary), config, model=ResolvedModel("s3://a", "v1"), canary=ResolvedModel("s3://b")),
    ]


def test_every_generated_child_validates_against_the_kuberay_crd_schemas(
    config: OperatorConfig, kuberay_validators: dict[str, Any]
) -> None:
    children = generated_children(config)
    assert {c["kind"] for c in children} == {"RayJob", "RayService"}
    for child in children:
        assert schema_errors(kuberay_validators, child) == [], child["metadata"]["name"]


def test_the_schema_check_catches_a_wrong_field(kuberay_validators: dict[str, Any], config: OperatorConfig) -> None:
    rayjob = generated_children(config)[0]
    rayjob["spec"]["shutdownAfterJobFinishes"] = "yes"
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName")
    errors = schema_errors(kuberay_validators, rayjob)
    assert any("shutdownAfterJobFinishes" in e for e in errors)
    assert any("groupName" in e for e in errors)


def test_every_generated_pod_template_is_a_valid_kubernetes_pod_template(config: OperatorConfig) -> None:
    for child in generated_children(config):
        assert pod_template_errors(child) == [], child["metadata"]["name"]
