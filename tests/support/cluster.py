"""An emulated cluster as a user and KubeRay see it, with the operator running against it (tests, benchmark)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubeforge.config import OperatorConfig
from kubernetes import client
from kubernetes.client.rest import ApiException

from .runner import EmulatorServer, OperatorRunner
from .schemas import pod_template_errors, schema_errors

T = TypeVar("T")

RESOURCES = {
    "DataPipeline": ("kubeforge.dev", "v1alpha1", "datapipelines"),
    "TrainingJob": ("kubeforge.dev", "v1alpha1", "trainingjobs"),
    "ModelDeployment": ("kubeforge.dev", "v1alpha1", "modeldeployments"),
    "RayJob": ("ray.io", "v1", "rayjobs"),
    "RayService": ("ray.io", "v1", "rayservices"),
    "PodMonitor": ("monitoring.coreos.com", "v1", "podmonitors"),
    "ServiceMonitor": ("monitoring.coreos.com", "v1", "servicemonitors"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
}
NAMESPACE = "ml"
WAIT_SECONDS = 30.0

# Short resync so a test never waits long for the safety net; events drive everything the tests check.
TEST_CONFIG = OperatorConfig(
    trainer_image="registry.example/kubeforge/trainer:test",
    requeue_seconds=2.0,
    metrics_port=0,
)


class Cluster:
    """The emulated cluster as a user and KubeRay see it, plus the operator running against it."""

    def __init__(
        self, server: EmulatorServer, validators: dict[str, Any] | None = None, config: OperatorConfig = TEST_CONFIG
    ) -> None:
        self.server = server
        self.validators = validators
        self.config = config
        configuration = client.Configuration()
        configuration.host = server.url
        self.api = client.CustomObjectsApi(client.ApiClient(configuration))
        self.core = client.CoreV1Api(client.ApiClient(configuration))
        self.operator: OperatorRunner | None = None

    def start_operator(self) -> None:
        """Start (or restart) the operator."""
        self.stop_operator()
        self.operator = OperatorRunner(self.server.url, self.config).start()

    def stop_operator(self) -> None:
        """Stop the operator if it runs."""
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a resource (kubectl apply of a new object)."""
        group, version, plural = RESOURCES[manifest["kind"]]
        return self.api.create_namespaced_custom_object(group, version, NAMESPACE, plural, manifest)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None."""
        group, version, plural = RESOURCES[kind]
        try:
            return self.api.get_namespaced_custom_object(group, version, NAMESPACE, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch an object (kubectl edit)."""
        group, version, plural = RESOURCES[kind]
        return self.api.patch_namespaced_custom_object(group, version, NAMESPACE, plural, name, body)

    def patch_status(self, kind: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch an object's status subresource (KubeRay or a workload reporting)."""
        group, version, plural = RESOURCES[kind]
        return self.api.patch_namespaced_custom_object_status(
            group, version, NAMESPACE, plural, name, {"status": status}
        )

    def delete(self, kind: str, name: str) -> None:
        """Delete an object."""
        group, version, plural = RESOURCES[kind]
        self.api.delete_namespaced_custom_object(group, version, NAMESPACE, plural, name)

    def service_account(self, name: str) -> dict[str, Any] | None:
        """A ServiceAccount (core v1) as a dict, or None."""
        try:
            found = self.core.read_namespaced_service_account(name, NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self.core.api_client.sanitize_for_serialization(found)

    def names(self, kind: str) -> list[str]:
        """Names of the objects of a kind."""
        group, version, plural = RESOURCES[kind]
        items = self.api.list_namespaced_custom_object(group, version, NAMESPACE, plural)["items"]
        return sorted(item["metadata"]["name"] for item in items)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
        """Poll until probe() returns something truthy; fail naming what was awaited."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            if self.operator is not None and not self.operator.alive:
                raise AssertionError(f"the operator stopped while waiting for {what}")
            time.sleep(0.05)

    def wait_child(self, kind: str, name: str) -> dict[str, Any]:
        """Wait until the child exists; check it against the KubeRay schema and the Pod schema."""
        child = self.wait_for(f"{kind} {name}", lambda: self.get(kind, name))
        if kind in ("RayJob", "RayService") and self.validators is not None:
            generated = {key: value for key, value in child.items() if key != "status"}  # status is KubeRay's
            errors = schema_errors(self.validators, generated) + pod_template_errors(generated)
            assert errors == [], f"{kind} {name} breaks the schema: {errors}"
        return child

    def wait_status(self, kind: str, name: str, **expected: Any) -> dict[str, Any]:
        """Wait until the resource's status holds the expected fields; returns the status."""

        def probe() -> dict[str, Any] | None:
            status = (self.get(kind, name) or {}).get("status") or {}
            return status if all(status.get(k) == v for k, v in expected.items()) else None

        try:
            return self.wait_for(f"{kind} {name} status {expected}", probe)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status is {(self.get(kind, name) or {}).get('status')}") from None

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        """One condition of the resource's status."""
        status = (self.get(kind, name) or {}).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})

    def events(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Kubernetes Events about one object, oldest first."""
        items = self.core.list_namespaced_event(NAMESPACE).items
        return [
            (e.type, e.reason, e.message)
            for e in items
            if e.involved_object.kind == kind and e.involved_object.name == name
        ]

    def kuberay(self, kind: str, name: str, **status: Any) -> None:
        """Play KubeRay: set a child's status."""
        self.patch_status(kind, name, status)
