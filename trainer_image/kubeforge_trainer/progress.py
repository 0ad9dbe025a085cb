"""How a running workload reports progress to its custom resource's status.

The one mechanism, used in the cluster and by the local runner alike:

* In the cluster, the Ray driver (and rank 0 of training) patches the ``status`` subresource of its own
  DataPipeline / TrainingJob / ModelDeployment with a JSON merge patch. The pod's ServiceAccount (set up by the
  Helm chart) may only ``get`` and ``patch`` ``<kind>/status`` of kubeforge resources: nothing else. The operator
  owns ``phase`` and ``conditions``; workloads write progress fields only (step, loss, rows, URL, ...).
* Locally (``kubeforge run``) the same fields go to ``<status dir>/<Kind>/<name>.json``, which ``kubeforge status``
  reads; the local runner also writes phase and conditions there, as the operator would in a cluster.

Every field is checked against the kind's status model before it is sent, so a typo fails in tests rather than being
pruned silently by the API server. Reporting never raises into the workload: a lost progress update must not kill
a training run. Updates are throttled; ``flush()`` and ``close()`` always send the latest values.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from kubeforge.api import DataPipelineStatus, ModelDeploymentStatus, TrainingJobStatus
from kubeforge.conditions import now_rfc3339
from kubeforge.constants import (
    ENV_RESOURCE_KIND,
    ENV_RESOURCE_NAME,
    ENV_RESOURCE_NAMESPACE,
    ENV_STATUS_DIR,
    GROUP,
    KINDS,
    VERSION,
)

log = logging.getLogger(__name__)

STATUS_MODELS = {
    "DataPipeline": DataPipelineStatus,
    "TrainingJob": TrainingJobStatus,
    "ModelDeployment": ModelDeploymentStatus,
}


def check_status_fields(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Validate camelCase status fields against the kind's status model; returns them in wire form."""
    model = STATUS_MODELS[kind]
    parsed = model.model_validate(fields)
    wire = parsed.model_dump(by_alias=True, mode="json", exclude_unset=True)
    return {k: wire[k] for k in fields}


class Reporter(Protocol):
    """Something that takes progress fields for one resource's status."""

    kind: str
    name: str

    def report(self, **fields: Any) -> None:
        """Merge these camelCase status fields (sent at most every interval seconds)."""

    def flush(self) -> None:
        """Send what is pending now."""

    def close(self) -> None:
        """Flush and stop."""


class _ThrottledReporter:
    """Shared throttling: keep the merged pending fields, send them at most every interval seconds."""

    def __init__(self, kind: str, name: str, interval: float) -> None:
        if kind not in STATUS_MODELS:
            raise ValueError(f"unknown kind {kind!r}")
        self.kind, self.name, self.interval = kind, name, interval
        self._pending: dict[str, Any] = {}
        self._last_sent = 0.0
        self._lock = threading.Lock()

    def report(self, **fields: Any) -> None:
        """Merge these camelCase status fields (sent at most every interval seconds)."""
        checked = check_status_fields(self.kind, fields)
        with self._lock:
            self._pending.update(checked)
            due = time.monotonic() - self._last_sent >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        """Send what is pending now."""
        with self._lock:
            if not self._pending:
                return
            fields, self._pending = self._pending, {}
            self._last_sent = time.monotonic()
        fields["lastProgressTime"] = now_rfc3339()
        try:
            self._send(fields)
        except Exception as exc:
            log.warning("could not report progress of %s/%s: %s", self.kind, self.name, exc)
            with self._lock:
                self._pending = {**fields, **self._pending}

    def close(self) -> None:
        """Flush and stop."""
        self.flush()

    def _send(self, fields: dict[str, Any]) -> None:
        raise NotImplementedError


class FileStatusReporter(_ThrottledReporter):
    """Writes status to ``<dir>/<Kind>/<name>.json`` (local runs), merging into what is there."""

    def __init__(self, kind: str, name: str, directory: str | Path, interval: float = 1.0) -> None:
        super().__init__(kind, name, interval)
        self.path = Path(directory) / kind / f"{name}.json"

    def _send(self, fields: dict[str, Any]) -> None:
        write_status_file(self.path, fields)


def read_status_file(path: Path) -> dict[str, Any]:
    """The status stored at path, or {} when there is none."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_status_file(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Merge fields into the status file atomically (write a temporary file, then rename); returns the result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**read_status_file(path), **fields}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
    tmp.replace(path)
    return merged


class KubeStatusReporter(_ThrottledReporter):
    """Patches the resource's status subresource through the Kubernetes API (in-cluster credentials)."""

    def __init__(
        self,
        kind: str,
        name: str,
        namespace: str,
        interval: float = 5.0,
        api: Any = None,
    ) -> None:
        super().__init__(kind, name, interval)
        self.namespace = namespace
        self._api = api

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.CustomObjectsApi()
        return self._api

    def _send(self, fields: dict[str, Any]) -> None:
        plural = KINDS[self.kind][0]
        self._client().patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, plural, self.name, {"status": fields}
        )


class NullReporter(_ThrottledReporter):
    """Checks fields and drops them (no resource to report to)."""

    def __init__(self, kind: str = "TrainingJob", name: str = "") -> None:
        super().__init__(kind, name, interval=0.0)

    def _send(self, fields: dict[str, Any]) -> None:
        log.debug("progress %s/%s: %s", self.kind, self.name, fields)


def reporter_from_env(kind: str, name: str | None = None) -> Reporter:
    """The reporter this process should use, chosen from the environment the operator or local runner set."""
    name = name or os.environ.get(ENV_RESOURCE_NAME, "")
    kind = os.environ.get(ENV_RESOURCE_KIND, kind)
    status_dir = os.environ.get(ENV_STATUS_DIR)
    if status_dir and name:
        return FileStatusReporter(kind, name, status_dir)
    namespace = os.environ.get(ENV_RESOURCE_NAMESPACE)
    if namespace and name:
        return KubeStatusReporter(kind, name, namespace)
    return NullReporter(kind, name)
