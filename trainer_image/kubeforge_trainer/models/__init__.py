"""Networks (GPT decoder, classifier) and the model directory format shared by training and serving."""

from .export import export_model, load_model_dir, read_model_info, save_model_dir
from .gpt import GPT, GPTForClassification, ModelConfig, build_model, init_weights

__all__ = [
    "GPT",
    "GPTForClassification",
    "ModelConfig",
    "build_model",
    "export_model",
    "init_weights",
    "load_model_dir",
    "read_model_info",
    "save_model_dir",
]
