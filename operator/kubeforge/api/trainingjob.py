"""TrainingJob: train with Ray Train + DeepSpeed ZeRO; validate, stop early, checkpoint, resume, test."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import (
    ApiModel,
    CommonSpec,
    CommonStatus,
    ObjectMeta,
    WorkerResources,
    at_most,
    cel,
    cel_rules,
    exactly_one,
)

# Sane upper bounds: far beyond any real run, far inside int64 (1e18 steps passed the CRD before they existed).
MAX_STEPS = 100_000_000
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536

# The trainer's own message for more than one GPU per worker (kubeforge_trainer.train.driver raises it too).
GPUS_PER_WORKER_MESSAGE = "each worker process drives one GPU; set workers.count to the number of GPUs instead"


class DataRef(ApiModel):
    """The data to train on: a DataPipeline, or the URI of a dataset manifest."""

    model_config = cel_rules(cel(exactly_one("name", "uri"), "dataRef sets exactly one of name or uri"))

    name: str | None = Field(default=None, description="Name of a DataPipeline in the same namespace.")
    uri: str | None = Field(
        default=None,
        description="Directory holding a DataPipeline output (_manifest.json), local or object store.",
    )


class PretrainedSpec(ApiModel):
    """Start from existing weights."""

    path: str = Field(description="Model directory or checkpoint, local path or object-store URI.")
    format: Literal["kubeforge", "huggingface"] = Field(
        default="kubeforge",
        description="kubeforge export/checkpoint, or a local Hugging Face transformers directory.",
    )


class LoraSpec(ApiModel):
    """Low-rank adaptation (through peft) for fine-tuning."""

    rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(default=16, gt=0, description="LoRA scaling alpha.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["qkv", "proj"],
        description="Names of the linear layers to adapt.",
    )


class ModelSpec(ApiModel):
    """The network."""

    model_config = cel_rules(
        cel(
            "self.dModel % self.nHeads == 0",
            "model.dModel must be divisible by model.nHeads",
        ),
    )

    task: Literal["languageModeling", "classification"] = Field(
        default="languageModeling",
        description="languageModeling trains a GPT-style decoder; classification adds a sequence-classification head.",
    )
    n_layers: int = Field(default=4, ge=1, le=256, description="Transformer blocks.")
    n_heads: int = Field(default=4, ge=1, le=256, description="Attention heads.")
    d_model: int = Field(default=256, ge=8, le=65536, description="Hidden width.")
    context_length: int = Field(default=256, ge=8, le=131072, description="Maximum sequence length.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout probability.")
    init: Literal["gpt2", "xavier", "kaiming"] = Field(
        default="gpt2",
        description="Weight initialisation: GPT-2 scaled normal, Xavier or Kaiming.",
    )
    num_labels: int | None = Field(
        default=None,
        ge=2,
        description="Classes for classification; defaults to the labels found in the data.",
    )
    pretrained: PretrainedSpec | None = Field(default=None, description="Fine-tune from these weights.")
    lora: LoraSpec | None = Field(default=None, description="Fine-tune with LoRA adapters only.")


class TrainingSpec(ApiModel):
    """Optimisation hyper-parameters."""

    model_config = cel_rules(
        cel(
            "has(self.epochs) || has(self.maxSteps)",
            "training needs epochs or maxSteps",
        ),
        cel(at_most("warmupSteps", "maxSteps", strict=True), "warmupSteps must be less than maxSteps"),
    )

    epochs: int | None = Field(default=None, ge=1, le=MAX_EPOCHS, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="Optimizer steps; wins over epochs when both are set.",
    )
    micro_batch_size: int = Field(default=8, ge=1, le=MAX_BATCH, description="Sequences per worker per forward pass.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=MAX_BATCH, description="Micro-batches per optimizer step."
    )
    optimizer: Literal["adamw", "adam", "sgd"] = Field(default="adamw", description="Optimizer.")
    learning_rate: float = Field(default=3e-4, gt=0, le=10, description="Peak learning rate.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Momentum for sgd.")
    betas: list[float] = Field(
        default_factory=lambda: [0.9, 0.95],
        min_length=2,
        max_length=2,
        description="Adam betas.",
    )
    weight_decay: float = Field(default=0.1, ge=0, description="Decoupled weight decay.")
    schedule: Literal["constant", "linear", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="Linear warmup steps.")
    min_learning_rate_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Final learning rate of linear/cosine decay, as a share of the peak.",
    )
    gradient_clipping: float | None = Field(default=1.0, gt=0, description="Clip the global gradient norm.")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16",
        description="Training precision; on CPU bf16 and fp16 fall back to fp32.",
    )
    seed: int = Field(default=42, description="Seed for initialisation and data order.")
    log_interval_steps: int = Field(default=10, ge=1, le=MAX_STEPS, description="Steps between progress reports.")


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO settings."""

    model_config = cel_rules(
        cel(
            "self.offloadParameters == 'none' || self.zeroStage == 3",
            "offloadParameters needs zeroStage 3",
        ),
        cel(
            "self.offloadOptimizer == 'none' || self.zeroStage >= 1",
            "offloadOptimizer needs zeroStage 1 or more",
        ),
    )

    zero_stage: int = Field(default=2, ge=0, le=3, description="ZeRO stage 0-3.")
    offload_optimizer: Literal["none", "cpu"] = Field(default="none", description="Offload optimizer state.")
    offload_parameters: Literal["none", "cpu"] = Field(default="none", description="Offload parameters (stage 3).")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config keys merged over the generated config (passthrough).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class EarlyStoppingSpec(ApiModel):
    """Stop when the metric stops improving."""

    metric: str = Field(
        default="loss",
        description="Evaluation metric to watch, e.g. loss, perplexity, f1.",
    )
    mode: Literal["min", "max"] = Field(default="min", description="Whether smaller or larger is better.")
    patience: int = Field(default=3, ge=1, le=1_000_000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0, description="Smallest change that counts as an improvement.")


class EvaluationSpec(ApiModel):
    """Validation during training and the final test."""

    interval_steps: int = Field(default=100, ge=1, le=MAX_STEPS, description="Steps between validation runs.")
    max_batches: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Cap on validation batches per run.")
    metrics: list[Literal["loss", "perplexity", "accuracy", "precision", "recall", "f1"]] = Field(
        default_factory=lambda: ["loss", "perplexity"],
        description="Metrics to compute.",
    )
    early_stopping: EarlyStoppingSpec | None = Field(default=None, description="Early stopping; off when unset.")
    best_metric: str = Field(default="loss", description="Metric that picks the best checkpoint.")
    best_mode: Literal["min", "max"] = Field(default="min", description="Whether smaller or larger is better.")
    test: bool = Field(
        default=True,
        description="Evaluate the best checkpoint on the test split at the end.",
    )


class CheckpointSpec(ApiModel):
    """Checkpointing and resume."""

    uri: str = Field(description="Checkpoint directory: local path, file://, s3:// or gs:// URI.")
    interval_steps: int = Field(default=500, ge=1, le=MAX_STEPS, description="Steps between checkpoints.")
    keep_last: int = Field(default=2, ge=1, le=1000, description="Checkpoints kept besides the best one.")
    resume: bool = Field(
        default=True,
        description="Resume from the latest checkpoint when one exists and belongs to this run (same training-"
        "relevant spec and data); false deletes the checkpoints under uri and starts at step 0.",
    )
    extend: bool = Field(
        default=False,
        description="Continue the checkpoints of the same run to a longer training.maxSteps/epochs (the "
        "learning-rate schedule is stretched to the new length); without it a changed length is refused.",
    )


class OutputModelSpec(ApiModel):
    """Where the inference-ready model goes."""

    uri: str | None = Field(
        default=None,
        description="Export directory; defaults to <checkpoint.uri>/model.",
    )


class TrainingWorkers(WorkerResources):
    """Ray Train workers."""

    model_config = cel_rules(cel("self.gpu <= 1", f"at most 1 GPU per worker: {GPUS_PER_WORKER_MESSAGE}"))

    count: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Number of training workers (one process each).",
    )


class FailurePolicy(ApiModel):
    """What happens when training fails."""

    max_retries: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Whole-job re-runs after failure, resuming from the latest checkpoint.",
    )
    max_worker_failures: int = Field(
        default=3,
        ge=-1,
        le=1_000_000,
        description="Worker failures Ray Train recovers from within one run (-1: unlimited).",
    )


class TrainingJobSpec(CommonSpec):
    """Desired state of a TrainingJob."""

    data_ref: DataRef = Field(description="Training data.")
    model: ModelSpec = Field(
        default_factory=ModelSpec,
        description="Model architecture or pretrained weights.",
    )
    training: TrainingSpec = Field(description="Optimisation hyper-parameters.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Validation, early stopping, test.")
    checkpoint: CheckpointSpec = Field(description="Checkpoints and resume.")
    output: OutputModelSpec = Field(default_factory=OutputModelSpec, description="Exported model.")
    workers: TrainingWorkers = Field(default_factory=TrainingWorkers, description="Ray Train workers.")
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Retries.")


class TrainingJobStatus(CommonStatus):
    """Observed state of a TrainingJob."""

    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput, all workers.")
    mfu: float | None = Field(default=None, description="Estimated model FLOPs utilisation (0-1), GPUs only.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds to finish.")
    progress: str | None = Field(default=None, description="Short progress text, e.g. '120/1000'.")
    eval_metrics: dict[str, float] = Field(default_factory=dict, description="Latest validation metrics.")
    best_metrics: dict[str, float] = Field(
        default_factory=dict, description="Validation metrics of the best checkpoint."
    )
    test_metrics: dict[str, float] = Field(
        default_factory=dict, description="Test-split metrics of the best checkpoint."
    )
    best_checkpoint: str | None = Field(default=None, description="URI of the best checkpoint.")
    latest_checkpoint: str | None = Field(default=None, description="URI of the latest checkpoint.")
    model_uri: str | None = Field(default=None, description="URI of the exported inference-ready model.")
    model_version: str | None = Field(default=None, description="Version id of the exported model.")
    stopped_early: bool | None = Field(default=None, description="Whether early stopping ended training.")
    resumed_from_step: int | None = Field(
        default=None, description="Step of the checkpoint this run resumed from (0: started fresh)."
    )


class TrainingJob(ApiModel):
    """A TrainingJob custom resource."""

    api_version: Literal["kubeforge.dev/v1alpha1"] = Field(description="kubeforge.dev/v1alpha1.")
    kind: Literal["TrainingJob"] = Field(description="TrainingJob.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state.")
