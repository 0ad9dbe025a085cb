"""ModelDeployment: serve a trained model with Ray Serve — batching, autoscaling, canary traffic, Prometheus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    ApiModel,
    CommonSpec,
    CommonStatus,
    ObjectMeta,
    WorkerResources,
    cel,
    cel_rules,
    exactly_one,
)

_ONE_MODEL = cel(exactly_one("modelRef", "modelUri"), "set exactly one of modelRef or modelUri")
MAX_REPLICAS = 10_000


class ModelRef(ApiModel):
    """A model exported by a TrainingJob."""

    name: str = Field(description="Name of a TrainingJob in the same namespace.")
    version: str | None = Field(
        default=None,
        description="Model version id; defaults to the job's latest export.",
    )


class ReplicaSpec(ApiModel):
    """Replica count and autoscaling (Ray Serve autoscaling_config)."""

    model_config = cel_rules(
        cel(
            "self.min <= self.max",
            "replicas.min must be less than or equal to replicas.max",
        )
    )

    min: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="Fewest replicas (0 allows scale to zero).")
    max: int = Field(default=1, ge=1, le=MAX_REPLICAS, description="Most replicas.")
    target_ongoing_requests: float = Field(
        default=2,
        gt=0,
        description="Ongoing requests per replica the autoscaler aims for.",
    )
    max_ongoing_requests: int = Field(default=32, ge=1, le=100_000, description="Requests one replica handles at once.")
    max_queued_requests: int = Field(
        default=128,
        ge=1,
        le=10_000_000,
        description="Requests queued per replica before new ones get 503 (backpressure).",
    )


class BatchingSpec(ApiModel):
    """Dynamic request batching (ray.serve.batch)."""

    enabled: bool = Field(default=True, description="Batch concurrent requests into one forward pass.")
    max_batch_size: int = Field(default=16, ge=1, le=4096, description="Most requests in one batch.")
    max_wait_ms: float = Field(
        default=5,
        ge=0,
        le=10000,
        description="Longest wait to fill a batch, in milliseconds.",
    )


class GenerationDefaults(ApiModel):
    """Defaults for /v1/completions; requests may override them."""

    max_tokens: int = Field(default=64, ge=1, le=65536, description="Tokens to generate.")
    temperature: float = Field(default=1.0, ge=0, le=10, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")


class CanarySpec(ApiModel):
    """A second model version behind the same endpoint."""

    model_config = cel_rules(_ONE_MODEL)

    model_ref: ModelRef | None = Field(default=None, description="Canary model from a TrainingJob.")
    model_uri: str | None = Field(default=None, description="Canary model directory, local or object store.")
    traffic_percent: int = Field(default=10, ge=0, le=100, description="Share of requests sent to the canary.")


class MonitoringSpec(ApiModel):
    """Prometheus scraping."""

    enabled: bool = Field(
        default=False,
        description="Create a PodMonitor or ServiceMonitor for the Ray pods.",
    )
    kind: Literal["PodMonitor", "ServiceMonitor"] = Field(default="PodMonitor", description="Prometheus Operator kind.")
    interval: str = Field(default="30s", description="Scrape interval.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels so your Prometheus selects the monitor.",
    )


class ModelDeploymentSpec(CommonSpec):
    """Desired state of a ModelDeployment."""

    model_config = cel_rules(_ONE_MODEL)

    model_ref: ModelRef | None = Field(default=None, description="Serve the model a TrainingJob exported.")
    model_uri: str | None = Field(default=None, description="Serve the model directory at this URI.")
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec, description="Replicas and autoscaling.")
    resources: WorkerResources = Field(default_factory=WorkerResources, description="Resources per replica.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching.")
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults, description="Generation defaults.")
    canary: CanarySpec | None = Field(default=None, description="Canary version and its traffic share.")
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="int8 applies dynamic quantisation to linear layers (CPU serving).",
    )
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Prometheus scraping.")
    ingress: Literal["proxy", "direct"] = Field(
        default="proxy",
        description=(
            "How HTTP reaches the replicas. proxy: through Ray Serve's HTTP proxy on every node. direct: each "
            "replica answers HTTP on the serve port itself (Ray Serve direct ingress, experimental in Ray 2.60), "
            "skipping the proxy hop; one replica per Ray node."
        ),
    )


class TrafficShare(ApiModel):
    """Traffic one version receives."""

    version: str = Field(description="Model version id.")
    model_uri: str = Field(default="", description="Model directory served by this version.")
    percent: int = Field(description="Share of requests.")


class ModelDeploymentStatus(CommonStatus):
    """Observed state of a ModelDeployment."""

    url: str | None = Field(default=None, description="Base URL of the HTTP endpoint.")
    replicas: int | None = Field(default=None, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, description="Replicas that serve.")
    model_uri: str | None = Field(default=None, description="Model directory being served.")
    model_version: str | None = Field(default=None, description="Version being served.")
    traffic: list[TrafficShare] = Field(default_factory=list, description="Traffic per version.")


class ModelDeployment(ApiModel):
    """A ModelDeployment custom resource."""

    api_version: Literal["kubeforge.dev/v1alpha1"] = Field(description="kubeforge.dev/v1alpha1.")
    kind: Literal["ModelDeployment"] = Field(description="ModelDeployment.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")
