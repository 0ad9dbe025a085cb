"""The model layer: transformers causal LMs and classifiers (from scratch or pretrained), LoRA/QLoRA through peft,
and the exported model directory. gpt.py is the pre-transformers decoder, kept only for serving's legacy loader."""

from .export import (
    export_files,
    export_model,
    hf_tokenizer,
    load_model_dir,
    read_model_info,
    save_hf_model,
    save_model_dir,
    write_info,
)

# Legacy names serving still imports (its pre-transformers loader); training uses build.py, pretrained.py, lora.py.
from .gpt import ModelConfig, build_model

__all__ = [
    "ModelConfig",
    "build_model",
    "export_files",
    "export_model",
    "hf_tokenizer",
    "load_model_dir",
    "read_model_info",
    "save_hf_model",
    "save_model_dir",
    "write_info",
]
