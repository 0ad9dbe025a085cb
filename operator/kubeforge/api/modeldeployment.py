"""ModelDeployment: serve a trained model with Ray Serve — batching, autoscaling, canary traffic, Prometheus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

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


class AdapterSpec(ApiModel):
    """A LoRA adapter served over the base model; a request's "model" field picks it by name."""

    model_config = cel_rules(
        cel(
            exactly_one("modelRef", "uri"),
            "set exactly one of modelRef or uri",
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="Name clients send as the request's model.",
    )
    model_ref: ModelRef | None = Field(default=None, description="The adapter a LoRA TrainingJob exported.")
    uri: str | None = Field(
        default=None, max_length=2048, description="Adapter directory (peft), local or object store."
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


class RequestLimits(ApiModel):
    """Per-request limits; a request over one gets a 400 that names it."""

    max_prompt_tokens: int | None = Field(
        default=None, ge=1, le=1048576, description="Most prompt tokens (after the chat template); default: context."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=65536, description="Most tokens one request may ask to generate."
    )


class AuthSpec(ApiModel):
    """API-key authentication: requests must send Authorization: Bearer <key>."""

    api_key_secret: str = Field(
        min_length=1, max_length=253, description="Secret in the same namespace that holds the accepted keys."
    )
    key: str = Field(
        default="apiKeys", min_length=1, max_length=253, description="Key of the Secret: the API keys, one per line."
    )


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

    model_config = cel_rules(
        _ONE_MODEL,
        cel(
            "!has(self.engine) || self.engine != 'vllm' || "
            "(has(self.resources) && has(self.resources.gpu) && self.resources.gpu > 0)",
            "spec.engine vllm needs GPUs: set spec.resources.gpu to 1 or more, or use engine transformers",
        ),
        cel(
            "!has(self.engine) || self.engine != 'vllm' || "
            "(!has(self.canary) && (!has(self.adapters) || size(self.adapters) == 0) && "
            "(!has(self.quantization) || self.quantization == 'none'))",
            "spec.engine vllm does not support canary, adapters or quantization yet; use engine transformers",
        ),
        cel(
            "!has(self.engine) || self.engine != 'vllm' || !has(self.playground) || !self.playground",
            "spec.playground needs engine transformers (the vllm engine has no playground yet)",
        ),
        cel(
            "!has(self.playground) || !self.playground || !has(self.replicas) || !has(self.replicas.max) || "
            "self.replicas.max <= 1",
            "spec.playground needs spec.replicas.max 1: a page's requests must all reach the replica holding its "
            "session",
        ),
    )

    model_ref: ModelRef | None = Field(default=None, description="Serve the model a TrainingJob exported.")
    model_uri: str | None = Field(default=None, description="Serve the model directory at this URI.")
    engine: Literal["transformers", "vllm"] = Field(
        default="transformers",
        description=(
            "transformers: kubeforge's app (continuous batching over a transformers model; CPU or GPU). vllm: Ray "
            "Serve LLM (ray.serve.llm, vLLM underneath) on GPUs."
        ),
    )
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
    limits: RequestLimits = Field(default_factory=RequestLimits, description="Per-request limits.")
    auth: AuthSpec | None = Field(default=None, description="API-key authentication (none when unset).")
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        max_length=32,
        # The API server keeps names unique (a list map keyed by name); the validator below says so offline.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description=(
            "LoRA adapters served over the base model. Adding one loads it into the running replicas without "
            "restarting them (Ray Serve user_config)."
        ),
    )
    playground: bool = Field(
        default=False,
        description=(
            "Serve a Gradio chat page at /playground of the same endpoint (streaming, adapter picker, sampling "
            "sliders); it answers through the deployment's own engine. With spec.auth the page asks for an API key."
        ),
    )
    ingress: Literal["proxy", "direct"] = Field(
        default="proxy",
        description=(
            "How HTTP reaches the replicas. proxy: through Ray Serve's HTTP proxy on every node. direct: each "
            "replica answers HTTP on the serve port itself (Ray Serve direct ingress, experimental in Ray 2.60), "
            "skipping the proxy hop; one replica per Ray node."
        ),
    )

    @field_validator("adapters")
    @classmethod
    def _unique_adapter_names(cls, adapters: list[AdapterSpec]) -> list[AdapterSpec]:
        names = [a.name for a in adapters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"spec.adapters names must be unique; repeated: {', '.join(repeated)}")
        return adapters


class TrafficShare(ApiModel):
    """Traffic one version receives."""

    version: str = Field(description="Model version id.")
    model_uri: str = Field(default="", description="Model directory served by this version.")
    percent: int = Field(description="Share of requests.")


class LoadedAdapter(ApiModel):
    """An adapter in the served configuration."""

    name: str = Field(description="Adapter name (the request's model).")
    version: str = Field(default="", description="Adapter version id.")


class ModelDeploymentStatus(CommonStatus):
    """Observed state of a ModelDeployment."""

    url: str | None = Field(default=None, description="Base URL of the HTTP endpoint.")
    replicas: int | None = Field(default=None, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, description="Replicas that serve.")
    model_uri: str | None = Field(default=None, description="Model directory being served.")
    model_version: str | None = Field(default=None, description="Version being served.")
    traffic: list[TrafficShare] = Field(default_factory=list, description="Traffic per version.")
    adapters: list[LoadedAdapter] = Field(default_factory=list, description="LoRA adapters being served.")


class ModelDeployment(ApiModel):
    """A ModelDeployment custom resource."""

    api_version: Literal["kubeforge.dev/v1alpha1"] = Field(description="kubeforge.dev/v1alpha1.")
    kind: Literal["ModelDeployment"] = Field(description="ModelDeployment.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")
