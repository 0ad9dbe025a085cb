"""The model layer: transformers causal LMs and classifiers (from scratch or pretrained), LoRA/QLoRA through peft,
and the exported model directory (a Hugging Face save_pretrained directory plus kubeforge.json)."""

from .export import (
    export_files,
    hf_tokenizer,
    read_model_info,
    save_hf_model,
    write_info,
)

__all__ = [
    "export_files",
    "hf_tokenizer",
    "read_model_info",
    "save_hf_model",
    "write_info",
]
