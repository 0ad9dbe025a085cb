"""LoRA adapters on kubeforge's networks through peft, and merging them back into plain weights for export."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def missing_lora_targets(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Targets that name no nn.Linear of the model (peft matches a target against the end of a module name)."""
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return [t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in linear_names)]


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    trainable_modules: Sequence[str] = (),
) -> nn.Module:
    """The model wrapped with LoRA adapters (a peft PeftModel): only the adapters and the modules named exactly
    in trainable_modules (e.g. a classifier's `head`) train."""
    from peft import LoraConfig, get_peft_model

    missing = missing_lora_targets(model, target_modules)
    if missing:
        raise ValueError(f"LoRA target modules {missing} match no linear layer of the model")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
    )
    wrapped = get_peft_model(model, config)
    # Not peft's modules_to_save: it matches name suffixes, so "head" would also catch (and untie) `gpt.lm_head`.
    wanted = set(trainable_modules)
    for name, param in wrapped.named_parameters():
        if name.split(".")[-2:-1] and name.split(".")[-2] in wanted:
            param.requires_grad_(True)
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain network with the adapters folded into its weights (for export); a model without LoRA as is."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if merge else model
