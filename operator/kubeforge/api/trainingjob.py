"""TrainingJob: train with Ray Train + DeepSpeed ZeRO; validate, stop early, checkpoint, resume, test."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

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

# Objectives (SFT, DPO): the objective names and the DPO validation metrics; DpoSpec is above TrainingJobSpec.
Objective = Literal["languageModeling", "sft", "dpo", "classification"]
DPO_METRIC_NAMES = Literal[
    "rewardAccuracy", "rewardMargin", "chosenReward", "rejectedReward", "chosenLogps", "rejectedLogps"
]


class DataRef(ApiModel):
    """The data to train on: a DataPipeline, or the URI of a dataset manifest."""

    model_config = cel_rules(cel(exactly_one("name", "uri"), "dataRef sets exactly one of name or uri"))

    name: str | None = Field(default=None, description="Name of a DataPipeline in the same namespace.")
    uri: str | None = Field(
        default=None,
        description="Directory holding a DataPipeline output (_manifest.json), local or object store.",
    )


# Fields of the pre-transformers model section, and what replaced them (see legacy_model_message).
LEGACY_MODEL_FIELDS = {
    "nLayers": "layers",
    "nHeads": "heads",
    "dModel": "hiddenSize",
}
LEGACY_PRETRAINED_FIELDS = {"path": "uri", "format": None}


def legacy_model_message(model: Any) -> str | None:
    """A one-line migration message when a spec.model (wire form) uses fields of the old GPT-only model layer."""
    if not isinstance(model, dict):
        return None
    old = [k for k in LEGACY_MODEL_FIELDS if k in model]
    if old:
        renames = ", ".join(f"{k} -> {LEGACY_MODEL_FIELDS[k]}" for k in old)
        return (
            f"spec.model.{old[0]}: the model section now describes a Hugging Face architecture; rename {renames} "
            "and set architecture (gpt2 is the old decoder's shape, llama the default)"
        )
    pretrained = model.get("pretrained")
    if isinstance(pretrained, dict) and ("path" in pretrained or "format" in pretrained):
        return (
            "spec.model.pretrained.path: renamed to pretrained.uri, a Hugging Face model directory (kubeforge exports "
            "are such directories now); drop pretrained.format"
        )
    return None


def _reject_legacy_model(data: Any) -> Any:
    message = legacy_model_message(data)
    if message:
        raise ValueError(message)
    return data


class PretrainedSpec(ApiModel):
    """Start from the weights of a Hugging Face model directory (save_pretrained layout)."""

    uri: str = Field(
        description="Hugging Face model directory (config.json + safetensors, sharded or not): local path, PVC mount, "
        "s3:// or gs:// URI. kubeforge exports are such directories.",
    )
    torch_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="dtype the weights load in (DeepSpeed keeps fp32 master weights and casts for bf16/fp16).",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa", description="transformers attention implementation."
    )
    trust_remote_code: bool = Field(
        default=False, description="Run the model directory's own Python code (only for directories you trust)."
    )


class LoraSpec(ApiModel):
    """Low-rank adaptation (through peft) for fine-tuning."""

    rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(default=16, gt=0, description="LoRA scaling alpha.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Names of the linear layers to adapt; default: peft's choice for the architecture "
        "(q_proj and v_proj for llama/qwen2/mistral, c_attn for gpt2).",
    )
    quantization: Literal["nf4"] | None = Field(
        default=None,
        description="QLoRA: load the frozen base in 4-bit NF4 through bitsandbytes (CUDA GPUs only).",
    )
    export: Literal["merged", "adapter"] = Field(
        default="merged",
        description="Export merged full weights, or the peft adapter alone with a reference to its base.",
    )


class ModelSpec(ApiModel):
    """The network: a transformers causal LM from scratch (architecture + sizes) or from pretrained weights."""

    model_config = cel_rules(
        cel(
            "self.hiddenSize % self.heads == 0",
            "model.hiddenSize must be divisible by model.heads",
        ),
        cel(
            "!has(self.kvHeads) || self.heads % self.kvHeads == 0",
            "model.heads must be divisible by model.kvHeads",
        ),
    )

    task: Literal["languageModeling", "classification"] = Field(
        default="languageModeling",
        description="languageModeling trains a causal LM; classification adds a sequence-classification head.",
    )
    architecture: str = Field(
        default="llama",
        min_length=1,
        max_length=64,
        description="transformers model_type built from scratch (llama, qwen2, mistral, gpt2, ... any that "
        "AutoModelForCausalLM supports); fixed by the weights when pretrained is set.",
    )
    hidden_size: int = Field(default=256, ge=8, le=65536, description="Hidden width.")
    layers: int = Field(default=4, ge=1, le=256, description="Transformer blocks.")
    heads: int = Field(default=4, ge=1, le=256, description="Attention heads.")
    kv_heads: int | None = Field(
        default=None, ge=1, le=256, description="Key/value heads (grouped-query attention); default: heads."
    )
    intermediate_size: int | None = Field(
        default=None, ge=8, le=262144, description="MLP width; default: 4 x hiddenSize."
    )
    context_length: int = Field(default=256, ge=8, le=131072, description="Maximum sequence length.")
    rope_theta: float | None = Field(
        default=None, gt=0, description="RoPE base frequency (architectures with rotary embeddings)."
    )
    rope_scaling: dict[str, Any] | None = Field(
        default=None,
        description="RoPE scaling parameters as transformers names them (e.g. {rope_type: linear, factor: 2}).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout probability.")
    init: Literal["gpt2", "xavier", "kaiming"] = Field(
        default="gpt2",
        description="Weight initialisation from scratch: GPT-2 scaled normal, Xavier or Kaiming.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass (less memory, ~30% more compute)."
    )
    num_labels: int | None = Field(
        default=None,
        ge=2,
        description="Classes for classification; defaults to the labels found in the data.",
    )
    pretrained: PretrainedSpec | None = Field(default=None, description="Start from these weights.")
    lora: LoraSpec | None = Field(default=None, description="Fine-tune with LoRA adapters only.")

    @model_validator(mode="before")
    @classmethod
    def _legacy_fields(cls, data: Any) -> Any:
        return _reject_legacy_model(data)


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
    metrics: list[Literal["loss", "perplexity", "accuracy", "precision", "recall", "f1", DPO_METRIC_NAMES]] | None = (
        Field(
            default=None,
            description="Metrics to compute; unset: every metric of the objective (see the objective).",
        )
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


# ---------------------------------------------------------------- training objective (SFT, DPO)

OBJECTIVE_RULES = (
    cel("!has(self.dpo) || (has(self.objective) && self.objective == 'dpo')", "dpo is only for objective dpo"),
    cel(
        "!has(self.objective) || (self.objective == 'classification') == "
        "(has(self.model) && has(self.model.task) && self.model.task == 'classification')",
        "objective classification needs model.task classification; languageModeling, sft and dpo need "
        "model.task languageModeling",
    ),
    cel(
        "!has(self.dpo) || !has(self.dpo.reference) || self.dpo.reference != 'adaptersDisabled' || "
        "(has(self.model) && has(self.model.lora))",
        "dpo.reference adaptersDisabled needs model.lora",
    ),
)


# The DataPipeline tokenizer.task (a dataset manifest's `task`) each objective trains on.
OBJECTIVE_DATA_TASK = {
    "languageModeling": "languageModeling",
    "classification": "classification",
    "sft": "chat",
    "dpo": "preference",
}


# The validation/test metrics of each objective (all of them when evaluation.metrics is unset).
OBJECTIVE_METRICS = {
    "languageModeling": ("loss", "perplexity"),
    "classification": ("loss", "accuracy", "precision", "recall", "f1"),
    "sft": ("loss", "perplexity"),  # on assistant tokens
    "dpo": (
        "loss",
        "rewardAccuracy",
        "rewardMargin",
        "chosenReward",
        "rejectedReward",
        "chosenLogps",
        "rejectedLogps",
    ),
}


def evaluation_metrics(spec: TrainingJobSpec) -> list[str]:
    """The metrics a run computes: spec.evaluation.metrics as written, or every metric of the objective."""
    if spec.evaluation.metrics is not None:
        return list(dict.fromkeys(spec.evaluation.metrics))
    return list(OBJECTIVE_METRICS[objective_of(spec)])


def objective_of(spec: TrainingJobSpec) -> str:
    """The run's objective: spec.objective, or model.task when it is unset."""
    return spec.objective or spec.model.task


class DpoSpec(ApiModel):
    """Direct preference optimisation: the loss variant and the reference model."""

    model_config = cel_rules(
        cel("self.lossType == 'robust' || self.labelSmoothing == 0.0", "labelSmoothing needs lossType robust"),
    )

    beta: float = Field(
        default=0.1,
        gt=0,
        le=1000,
        description="How far the policy may move from the reference (DPO's beta; IPO's tau).",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        default="sigmoid",
        description="sigmoid (DPO), ipo (token-averaged log-ratios), hinge (SLiC) or robust (noisy labels).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="lossType robust: the probability that a preference label is flipped.",
    )
    reference: Literal["base", "adaptersDisabled"] | None = Field(
        default=None,
        description="base: a frozen copy of the starting weights; adaptersDisabled: the LoRA model with its adapters "
        "off (no second copy). Unset: adaptersDisabled with model.lora, base otherwise.",
    )


class TrainingJobSpec(CommonSpec):
    """Desired state of a TrainingJob."""

    model_config = cel_rules(*OBJECTIVE_RULES)

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
    objective: Objective | None = Field(
        default=None,
        description="What the model learns: languageModeling (next token), sft (assistant tokens of chat data), dpo "
        "(preference pairs) or classification; unset: model.task.",
    )
    dpo: DpoSpec | None = Field(default=None, description="DPO settings (objective dpo; the defaults when unset).")


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
    train_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Objective metrics of the latest training log window (dpo: reward accuracy, margin, log-probs).",
    )
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
