"""RayJob manifests for DataPipelines and TrainingJobs (pure: no API calls, no kopf)."""

from __future__ import annotations

import copy
import json
from typing import Any

from ..api import DataPipeline, TrainingJob
from ..config import OperatorConfig
from ..constants import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_SPEC_HASH,
    ENV_RESOURCE_KIND,
    ENV_RESOURCE_NAME,
    ENV_RESOURCE_NAMESPACE,
    RAY_API_VERSION,
)
from .common import (
    Volume,
    child_labels,
    child_name,
    from_yaml,
    pvc_volume,
    ray_cluster_spec,
    resource_document,
    resource_metadata,
    spec_hash,
    to_yaml,
)

# docs/contracts.md: the entry point and environment of the Ray jobs.
ENV_RESOURCE = "KUBEFORGE_RESOURCE"
ENV_DATA_URI = "KUBEFORGE_DATA_URI"
STEP = {"DataPipeline": "data", "TrainingJob": "train"}


def entrypoint(kind: str) -> str:
    """The RayJob entrypoint running the kind's step of kubeforge_trainer."""
    return f"python -m kubeforge_trainer {STEP[kind]}"


def job_environment(
    resource: DataPipeline | TrainingJob, spec: dict[str, Any], data_uri: str | None = None
) -> dict[str, str]:
    """Environment variables of the Ray job (driver and every worker process)."""
    meta = resource_metadata(resource)
    env = {
        ENV_RESOURCE: json.dumps(resource_document(resource.kind, meta, spec), sort_keys=True, separators=(",", ":")),
        ENV_RESOURCE_KIND: resource.kind,
        ENV_RESOURCE_NAME: meta["name"],
        ENV_RESOURCE_NAMESPACE: meta["namespace"] or "default",
    }
    if data_uri:
        env[ENV_DATA_URI] = data_uri
    return env


def build_rayjob(
    resource: DataPipeline | TrainingJob,
    config: OperatorConfig,
    *,
    raw_spec: dict[str, Any],
    data_uri: str | None = None,
    attempt: int = 0,
) -> dict[str, Any]:
    """The RayJob that runs one attempt of a DataPipeline or TrainingJob; its Ray cluster goes away when it ends.

    raw_spec is the spec as stored in the cluster: its hash, recorded on the RayJob, tells later whether the spec
    changed after the job started. Retries (attempt > 0) force spec.checkpoint.resume so training continues from
    the latest checkpoint.
    """
    kind = resource.kind
    meta = resource_metadata(resource)
    spec = resource.spec
    workload_spec = resource.to_wire()["spec"]
    volumes: tuple[Volume, ...] = ()
    if isinstance(resource, TrainingJob):
        workers = spec.workers
        count = spec.workers.count
        if attempt:
            workload_spec["checkpoint"]["resume"] = True
    else:
        workers = spec.resources
        count = spec.resources.workers
        if spec.source.pvc is not None:
            volumes = (pvc_volume(spec.source.pvc.claim_name),)
    runtime_env = {"env_vars": job_environment(resource, workload_spec, data_uri)}
    rayjob_spec: dict[str, Any] = {
        "entrypoint": entrypoint(kind),
        "runtimeEnvYAML": to_yaml(runtime_env),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished or 0,
        # Retries are the operator's (failurePolicy.maxRetries), each a new RayJob, so KubeRay must not retry too.
        "backoffLimit": 0,
        "suspend": spec.suspend,
        "rayClusterSpec": ray_cluster_spec(
            kind=kind,
            name=meta["name"],
            spec=spec,
            config=config,
            workers=workers,
            min_workers=count,
            max_workers=count,
            volumes=volumes,
        ),
    }
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": child_name(kind, meta["name"], attempt),
            "namespace": meta["namespace"],
            "labels": child_labels(kind, meta["name"], spec.queue_name),
            "annotations": {ANNOTATION_SPEC_HASH: spec_hash(raw_spec), ANNOTATION_ATTEMPT: str(attempt)},
        },
        "spec": rayjob_spec,
    }


def build_retry(previous: dict[str, Any], kind: str, name: str, attempt: int) -> dict[str, Any]:
    """The RayJob of the next attempt, copied from the failed one so a retry runs exactly the spec the job
    started with (a later spec change is ignored), resuming from the latest checkpoint."""
    metadata = previous.get("metadata") or {}
    spec = copy.deepcopy(previous["spec"])
    runtime_env = from_yaml(spec.get("runtimeEnvYAML") or "{}") or {}
    env = runtime_env.setdefault("env_vars", {})
    if ENV_RESOURCE in env:
        document = json.loads(env[ENV_RESOURCE])
        checkpoint = document.get("spec", {}).get("checkpoint")
        if isinstance(checkpoint, dict):
            checkpoint["resume"] = True
        env[ENV_RESOURCE] = json.dumps(document, sort_keys=True, separators=(",", ":"))
    spec["runtimeEnvYAML"] = to_yaml(runtime_env)
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k == ANNOTATION_SPEC_HASH}
    annotations[ANNOTATION_ATTEMPT] = str(attempt)
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": child_name(kind, name, attempt),
            "namespace": metadata.get("namespace"),
            "labels": dict(metadata.get("labels") or {}),
            "annotations": annotations,
        },
        "spec": spec,
    }
