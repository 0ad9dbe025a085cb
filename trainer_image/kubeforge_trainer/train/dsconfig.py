"""Pure construction of the DeepSpeed config from a TrainingJob spec (ZeRO, offload, precision, batch, clipping).

spec.deepspeed.config is merged over the generated config (raw passthrough), except for the keys the spec owns:
setting one of those to a different value is an error that names the spec field to change instead.
"""

from __future__ import annotations

import copy
from typing import Any

from kubeforge.api.trainingjob import TrainingJobSpec

# DeepSpeed keys (dotted paths) the spec owns, and the spec field that sets each.
MANAGED_KEYS = {
    "train_micro_batch_size_per_gpu": "spec.training.microBatchSize",
    "gradient_accumulation_steps": "spec.training.gradientAccumulationSteps",
    "train_batch_size": "spec.training.microBatchSize x gradientAccumulationSteps x workers.count",
    "gradient_clipping": "spec.training.gradientClipping",
    "zero_optimization.stage": "spec.deepspeed.zeroStage",
    "bf16.enabled": "spec.training.precision",
    "fp16.enabled": "spec.training.precision",
}


def effective_precision(precision: str, use_gpu: bool) -> str:
    """The precision that will run: bf16/fp16 fall back to fp32 on CPU."""
    return precision if use_gpu else "fp32"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: override merged into base recursively (dicts merge, everything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _get_path(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def managed_key_conflicts(generated: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """One message per raw key that changes a value the spec owns, e.g. `zero_optimization.stage`."""
    problems = []
    for dotted, owner in MANAGED_KEYS.items():
        present, value = _get_path(raw, dotted)
        if not present:
            continue
        _, ours = _get_path(generated, dotted)
        if value != ours:
            problems.append(f"spec.deepspeed.config.{dotted}: {value!r} conflicts with {owner} ({ours!r}); set that")
    return problems


def build_deepspeed_config(spec: TrainingJobSpec, world_size: int, use_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config for this spec on world_size workers, raw spec.deepspeed.config merged over it.

    Raises ValueError naming the field when a raw key contradicts the spec.
    """
    training, ds = spec.training, spec.deepspeed
    precision = effective_precision(training.precision, use_gpu)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        # Overlapping the gradient reduction with the backward pass only pays with a reduction to overlap: on one
        # worker it adds device synchronisations per bucket (3 ms a step for GPT-2-124M on one H100).
        zero.update(contiguous_gradients=True, overlap_comm=use_gpu and world_size > 1)
    if ds.zero_stage == 3:
        # Gathering 16-bit weights on save keeps `save_16bit_model` usable by people who bring their own tooling.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.offload_parameters == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "train_batch_size": training.micro_batch_size * training.gradient_accumulation_steps * world_size,
        "gradient_clipping": training.gradient_clipping or 0.0,
        "zero_optimization": zero,
        # bf16 has fp32's exponent range and needs no loss scaling; DeepSpeed's default overflow check before each
        # step tests every gradient tensor on its own (amax, amin, isfinite: ~1,200 kernel launches and a host sync
        # a step for GPT-2-124M, 20 ms of a 75 ms ZeRO-2 step on one H100). Set it in spec.deepspeed.config to
        # have steps with non-finite gradients skipped.
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": False},
        "fp16": {"enabled": precision == "fp16"},
        # kubeforge builds the optimizer itself (torch AdamW/Adam/SGD, DeepSpeedCPUAdam when offloading), which
        # DeepSpeed calls "untested" with ZeRO; these let it through.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        # kubeforge logs progress itself; DeepSpeed's own per-step prints would only duplicate it.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        generated["fp16"].update(loss_scale=0, initial_scale_power=16, loss_scale_window=1000, hysteresis=2)
    problems = managed_key_conflicts(generated, ds.config)
    if problems:
        raise ValueError(problems[0])
    return deep_merge(generated, ds.config)


def raw_builds_optimizer(spec: TrainingJobSpec) -> bool:
    """True when the raw DeepSpeed config names an optimizer, which then replaces spec.training.optimizer."""
    return "optimizer" in spec.deepspeed.config


def raw_builds_scheduler(spec: TrainingJobSpec) -> bool:
    """True when the raw DeepSpeed config names a scheduler, which then replaces spec.training.schedule."""
    return "scheduler" in spec.deepspeed.config
