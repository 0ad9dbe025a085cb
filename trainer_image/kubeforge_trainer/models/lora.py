"""LoRA and QLoRA adapters on any transformers architecture through peft, merging, and adapter export."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .build import CLASSIFICATION


def default_target_modules(model_type: str) -> list[str] | None:
    """peft's default LoRA targets for a model_type (q_proj/v_proj for llama, c_attn for gpt2), None if unknown."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(targets) if targets else None


def _adaptable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D)) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def missing_lora_targets(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Targets that name no linear layer of the model (peft matches a target against the end of a module name)."""
    names = [name for name, module in model.named_modules() if _adaptable(module)]
    return [t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]


def resolve_target_modules(model_type: str, target_modules: Sequence[str] | None) -> list[str]:
    """The spec's targets, or the architecture's default; ValueError when there is neither."""
    if target_modules:
        return list(target_modules)
    default = default_target_modules(model_type)
    if not default:
        raise ValueError(f"architecture {model_type} has no default LoRA targets: set lora.targetModules")
    return default


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str] | None,
    task: str,
    quantized: bool = False,
) -> nn.Module:
    """The model wrapped with LoRA adapters (a peft PeftModel). Only the adapters train, plus a classifier's
    fresh head (peft's SEQ_CLS task keeps `score`/`classifier` trainable); a 4-bit base is prepared for k-bit
    training first (QLoRA)."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_target_modules(model.config.model_type, target_modules)
    missing = missing_lora_targets(model, targets)
    if missing:
        raise ValueError(f"LoRA target modules {missing} match no linear layer of the model")
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type=TaskType.SEQ_CLS if task == CLASSIFICATION else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain network with the adapters folded into its weights (for export); a model without LoRA as is."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if merge else model
