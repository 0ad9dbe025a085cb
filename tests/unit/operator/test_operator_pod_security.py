"""Every Ray pod kubeforge generates meets the Pod Security Standards' "restricted" policy, checked by the controls
of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (Baseline and Restricted, as of v1.30), and
spec.pod's overrides reach every Ray container."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubeforge.api import DataPipeline
from kubeforge.builders import build_rayjob
from kubeforge.builders.common import shm_size
from kubeforge.config import OperatorConfig
from support.manifests import quickstart_body
from test_operator_builders import POD_OVERRIDES, generated_children

# Baseline, "Capabilities": what may be added (Restricted narrows it to NET_BIND_SERVICE).
RESTRICTED_ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}
# Restricted, "Volume Types".
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Baseline, "Sysctls": the safe set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the restricted policy (Baseline's controls included), one line per control."""
    problems: list[str] = []
    pod_context = pod.get("securityContext", {})
    containers = [
        *pod.get("containers", []),
        *pod.get("initContainers", []),
        *pod.get("ephemeralContainers", []),
    ]
    contexts = [("spec.securityContext", pod_context)]
    contexts += [(f"container {c['name']}", c.get("securityContext", {})) for c in containers]
    # Baseline.
    for where, context in contexts:
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"HostProcess: {where}")
        if context.get("privileged"):
            problems.append(f"Privileged Containers: {where}")
        level = context.get("seLinuxOptions", {})
        if level.get("type", "") not in SELINUX_TYPES or level.get("user") or level.get("role"):
            problems.append(f"SELinux: {where}")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"/proc Mount Type: {where}")
        if context.get("appArmorProfile", {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"AppArmor: {where}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"Host Namespaces: spec.{key}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"HostPath Volumes: {volume['name']}")
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"Volume Types: {volume['name']} is {sorted(kinds)}")
    for container in containers:
        for port in container.get("ports", []):
            if port.get("hostPort", 0):
                problems.append(f"Host Ports: container {container['name']}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"Sysctls: {sysctl['name']}")
    # Restricted.
    for container in containers:
        where, context = f"container {container['name']}", container.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"Privilege Escalation: {where} must set allowPrivilegeEscalation false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"Running as Non-root: {where}")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"Running as Non-root user: {where} runs as uid 0")
        profile = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            problems.append(f"Seccomp: {where} has {profile}")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"Capabilities: {where} must drop ALL")
        if not set(capabilities.get("add", [])) <= RESTRICTED_ADDABLE_CAPABILITIES:
            problems.append(f"Capabilities: {where} adds {sorted(capabilities['add'])}")
    if pod_context.get("runAsNonRoot") is False:
        problems.append("Running as Non-root: spec.securityContext sets runAsNonRoot false")
    if pod_context.get("runAsUser") == 0:
        problems.append("Running as Non-root user: spec.securityContext runs as uid 0")
    return problems


def ray_pods(child: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of a RayJob's or RayService's head and worker groups; the head with the autoscaler container
    KubeRay adds from autoscalerOptions when autoscaling is on."""
    cluster = child["spec"].get("rayClusterSpec")
    if cluster is None:
        cluster = child["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    pods = [copy.deepcopy(group["template"]["spec"]) for group in groups]
    if cluster.get("enableInTreeAutoscaling"):
        autoscaler = {"name": "autoscaler", **cluster.get("autoscalerOptions", {})}
        pods[0]["containers"].append(autoscaler)
    return pods


def test_every_generated_ray_pod_meets_the_restricted_policy(config: OperatorConfig) -> None:
    pods = [pod for child in generated_children(config) for pod in ray_pods(child)]
    assert len(pods) >= 16
    assert any(len(pod["containers"]) == 2 for pod in pods)  # an autoscaling RayService's head
    for pod in pods:
        assert restricted_violations(pod) == []
        container = pod["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/home/kubeforge", "/dev/shm"} <= mounts  # the writable places Ray needs


def test_the_check_finds_each_kind_of_violation(config: OperatorConfig) -> None:
    """The check is not vacuous: each change below breaks one control and is reported."""
    pod = ray_pods(generated_children(config)[0])[0]
    breaks = {
        "Privileged Containers": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        "Privilege Escalation": lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "Capabilities": lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "Seccomp": lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "Running as Non-root user": lambda p: p["containers"][0]["securityContext"].update(runAsUser=0),
        "HostPath Volumes": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "Host Namespaces": lambda p: p.update(hostNetwork=True),
        "Host Ports": lambda p: p["containers"][0]["ports"].append({"containerPort": 1, "hostPort": 1}),
    }
    for control, change in breaks.items():
        broken = copy.deepcopy(pod)
        change(broken)
        assert any(v.startswith(control) for v in restricted_violations(broken)), control


def test_pod_overrides_reach_every_ray_container(config: OperatorConfig) -> None:
    body = quickstart_body("DataPipeline")
    body["spec"]["pod"] = {
        **POD_OVERRIDES,
        "env": [*POD_OVERRIDES["env"], {"name": "KUBEFORGE_LOG_LEVEL", "value": "DEBUG"}],
        "securityContext": {"readOnlyRootFilesystem": False, "runAsUser": 2000},
    }
    rayjob = build_rayjob(DataPipeline.model_validate(body), config, raw_spec=body["spec"])
    for pod in ray_pods(rayjob):
        (container,) = pod["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
        assert len(env) == len(container["env"])  # no name twice
        assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in pod["volumes"]
        assert {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True} in container["volumeMounts"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is False and context["runAsUser"] == 2000
        assert context["capabilities"] == {"drop": ["ALL"]}  # the fields not set keep the restricted default
        assert restricted_violations(pod) == []


def test_an_override_that_breaks_the_policy_is_applied_and_seen(config: OperatorConfig) -> None:
    body = quickstart_body("DataPipeline")
    body["spec"]["pod"] = {"securityContext": {"capabilities": {"add": ["SYS_PTRACE"], "drop": ["ALL"]}}}
    rayjob = build_rayjob(DataPipeline.model_validate(body), config, raw_spec=body["spec"])
    for pod in ray_pods(rayjob):
        assert [v.split(":")[0] for v in restricted_violations(pod)] == ["Capabilities"]


@pytest.mark.parametrize(
    "memory, size", [("2Gi", "1024Mi"), ("64Gi", "32768Mi"), ("3G", "1430Mi"), (4 * 2**30, "2048Mi"), ("100Mi", "64Mi")]
)
def test_dev_shm_is_half_the_containers_memory(memory: Any, size: str) -> None:
    assert shm_size(memory) == size


def test_the_worker_shm_follows_the_worker_memory(config: OperatorConfig) -> None:
    body = quickstart_body("TrainingJob")
    body["spec"]["workers"] = {"count": 2, "cpu": 2, "memory": "16Gi"}
    from kubeforge.api import TrainingJob

    rayjob = build_rayjob(TrainingJob.model_validate(body), config, raw_spec=body["spec"], data_uri="s3://d")
    head, worker = ray_pods(rayjob)
    shm = {p["volumes"][2]["name"]: p["volumes"][2]["emptyDir"] for p in (worker,)}
    assert shm == {"kf-dshm": {"medium": "Memory", "sizeLimit": "8192Mi"}}
    assert head["volumes"][2]["emptyDir"]["sizeLimit"] == "1024Mi"  # the head's 2Gi


def test_token_auth_is_on_where_the_ray_version_has_it(config: OperatorConfig) -> None:
    body = quickstart_body("DataPipeline")
    resource = DataPipeline.model_validate(body)
    assert build_rayjob(resource, config, raw_spec=body["spec"])["spec"]["rayClusterSpec"]["authOptions"] == {
        "mode": "token"
    }
    old = OperatorConfig(**{**config.__dict__, "ray_version": "2.40.0"})
    assert "authOptions" not in build_rayjob(resource, old, raw_spec=body["spec"])["spec"]["rayClusterSpec"]
    head = build_rayjob(resource, config, raw_spec=body["spec"])["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert "dashboard-host" not in head["rayStartParams"]  # KubeRay's default (all interfaces) applies


@pytest.mark.parametrize(
    "pod, field, message",
    [
        (
            {"volumes": [{"name": "x", "emptyDir": {}, "secret": {"secretName": "s"}}]},
            "spec.pod.volumes[0]",
            "exactly one",
        ),
        ({"volumes": [{"name": "kf-tmp", "emptyDir": {}}]}, "spec.pod.volumes[0].name", "kubeforge's own volumes"),
        ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "spec.pod", "must name one of volumes"),
        ({"envFrom": [{"prefix": "S3_"}]}, "spec.pod.envFrom[0]", "exactly one of secretRef, configMapRef"),
        ({"env": [{"name": "A"}]}, "spec.pod.env[0]", "exactly one of value, valueFrom"),
    ],
)
def test_bad_pod_overrides_are_refused_naming_the_field(pod: dict[str, Any], field: str, message: str) -> None:
    from kubeforge.validate import validate_document

    body = quickstart_body("DataPipeline")
    body["spec"]["pod"] = pod
    resource, problems = validate_document("test", body)
    assert resource is None
    assert [(p.path, message in p.message) for p in problems] == [(field, True)]


def test_good_pod_overrides_pass_validation() -> None:
    from kubeforge.validate import validate_document

    body = quickstart_body("DataPipeline")
    body["spec"]["pod"] = {
        **POD_OVERRIDES,
        "volumeMounts": [*POD_OVERRIDES["volumeMounts"], {"name": "kf-tmp", "mountPath": "/scratch"}],
    }
    assert validate_document("test", body)[1] == []


def test_the_writable_home_is_the_trainer_images_home() -> None:
    from pathlib import Path

    from kubeforge.builders.common import TRAINER_HOME

    dockerfile = (Path(__file__).resolve().parents[3] / "trainer_image" / "Dockerfile").read_text()
    assert f"ENV HOME={TRAINER_HOME}\n" in dockerfile
