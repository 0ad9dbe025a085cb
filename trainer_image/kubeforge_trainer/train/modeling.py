"""The network a TrainingJob trains: a transformers model from the spec's architecture or a pretrained directory,
vocabulary resizing, LoRA/QLoRA, optimizer, and the consolidation of (ZeRO-partitioned) weights into one plain
Hugging Face model for checkpoints and export."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from kubeforge.api.trainingjob import LoraSpec, ModelSpec, TrainingSpec
from tokenizers import Tokenizer
from torch import nn

from .. import storage
from ..models.build import build_config, build_model, context_length, flops_per_token
from ..models.export import ADAPTER_CONFIG_FILE, INFO_FILE, save_hf_model
from ..models.lora import apply_lora, merge_lora, missing_lora_targets, resolve_target_modules
from ..models.pretrained import load_pretrained, local_model_dir, read_config, resize_vocabulary
from .plan import CLASSIFICATION, LANGUAGE_MODELING, DatasetInfo, spec_error

log = logging.getLogger(__name__)

# ModelSpec fields (python name -> wire name) that describe an architecture built from scratch; a pretrained
# directory fixes them, so setting one beside pretrained is an error.
ARCHITECTURE_FIELDS = {
    "architecture": "architecture",
    "hidden_size": "hiddenSize",
    "layers": "layers",
    "heads": "heads",
    "kv_heads": "kvHeads",
    "intermediate_size": "intermediateSize",
    "context_length": "contextLength",
    "rope_theta": "ropeTheta",
    "rope_scaling": "ropeScaling",
    "init": "init",
}
ADAPTER_DIR = "adapter"  # inside a checkpoint of a LoRA run: the peft adapter alone


@dataclass
class ModelPlan:
    """What the driver resolved about the network; sent to the workers as a plain dict."""

    task: str
    architecture: str  # transformers model_type
    config: dict[str, Any]  # transformers config (to_dict) of the network to train: vocabulary already resized
    init: str = "gpt2"
    num_labels: int = 0
    labels: list[str] = field(default_factory=list)
    pad_token_id: int = 0
    eos_token_id: int | None = None
    pretrained_uri: str | None = None
    base_vocab_size: int | None = None  # the pretrained model's, when the dataset's vocabulary is larger
    sequence_length: int = 0  # tokens per forward pass
    flops_per_token: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelPlan:
        """Rebuild from to_dict() output."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def hf_config(self) -> Any:
        """The transformers config object (labels and special tokens applied)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.architecture, **self._config_fields())

    def _config_fields(self) -> dict[str, Any]:
        fields = dict(self.config)
        if "id2label" in fields:  # JSON keys are strings; transformers wants the label ids
            fields["id2label"] = {int(k): v for k, v in fields["id2label"].items()}
        return fields

    def label_fields(self) -> dict[str, Any]:
        """num_labels, id2label and label2id for a classifier's from_pretrained (empty for language models)."""
        if self.task != CLASSIFICATION:
            return {}
        fields = self._config_fields()
        return {"id2label": fields["id2label"], "label2id": fields["label2id"]}


def _special_tokens(dataset: DatasetInfo) -> dict[str, int | None]:
    # The manifest names no BOS token: none, rather than an architecture's default id (GPT-2's 50256) that may lie
    # outside the dataset's vocabulary.
    return {"pad_token_id": dataset.pad_token_id, "eos_token_id": dataset.eos_token_id, "bos_token_id": None}


def _label_fields(model: ModelSpec, dataset: DatasetInfo) -> dict[str, Any]:
    if model.task != CLASSIFICATION:
        return {}
    labels = list(dataset.labels)
    num_labels = model.num_labels or len(labels)
    names = labels + [f"LABEL_{i}" for i in range(len(labels), num_labels)]
    return {
        "num_labels": num_labels,
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def resolve_model(
    resource_name: str, model: ModelSpec, dataset: DatasetInfo, pretrained_config: Any | None
) -> ModelPlan:
    """The network to train: the spec's architecture and sizes, or the pretrained config (explicit architecture
    fields beside pretrained are an error), grown to the dataset's vocabulary; labels and special tokens from the
    dataset. Raises SpecError naming the field."""
    # Packed language-model rows feed sequenceLength - 1 tokens; chat and preference rows all of theirs.
    needed = dataset.sequence_length - 1 if dataset.task == LANGUAGE_MODELING else dataset.sequence_length
    labels = _label_fields(model, dataset)
    base_vocab = None
    if pretrained_config is None:
        try:
            config = build_config(
                model.architecture,
                vocab_size=dataset.vocab_size,
                hidden_size=model.hidden_size,
                layers=model.layers,
                heads=model.heads,
                kv_heads=model.kv_heads,
                intermediate_size=model.intermediate_size,
                context_length=model.context_length,
                rope_theta=model.rope_theta,
                rope_scaling=model.rope_scaling,
                dropout=model.dropout,
                special_tokens=_special_tokens(dataset),
            )
        except ValueError as exc:
            wire, _, problem = str(exc).partition(": ")
            raise spec_error(resource_name, f"spec.model.{wire}", problem) from exc
        except TypeError as exc:  # a config class that rejects one of the generic size names
            raise spec_error(resource_name, "spec.model.architecture", f"{model.architecture}: {exc}") from exc
    else:
        for name, wire in ARCHITECTURE_FIELDS.items():
            # The defaulted wire form (API server, local runner) sets every field; only a non-default value clashes.
            if name in model.model_fields_set and getattr(model, name) != type(model).model_fields[name].default:
                raise spec_error(
                    resource_name, f"spec.model.{wire}", "is fixed by spec.model.pretrained (leave it unset)"
                )
        config = pretrained_config
        window = context_length(config)
        if window is not None and window < needed:
            raise spec_error(
                resource_name,
                "spec.model.pretrained",
                f"its context length {window} is shorter than the dataset's sequences ({needed} tokens)",
            )
        if config.vocab_size < dataset.vocab_size:
            base_vocab = config.vocab_size
            config.vocab_size = dataset.vocab_size  # resized on load: new rows at the mean of the old ones
        if config.pad_token_id is None:
            config.pad_token_id = dataset.pad_token_id
    for key, value in labels.items():
        setattr(config, key, value)
    with torch.device("meta"):
        network = build_model(config, task=model.task, init="gpt2")
    flops = flops_per_token(network, config, needed)
    data = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path"):
        data.pop(key, None)
    data["id2label"] = {str(k): v for k, v in config.id2label.items()}
    return ModelPlan(
        task=model.task,
        architecture=config.model_type,
        config=data,
        init=model.init,
        num_labels=labels.get("num_labels", 0),
        labels=list(dataset.labels) if model.task == CLASSIFICATION else [],
        pad_token_id=dataset.pad_token_id,
        eos_token_id=dataset.eos_token_id,
        pretrained_uri=model.pretrained.uri if model.pretrained else None,
        base_vocab_size=base_vocab,
        sequence_length=needed,
        flops_per_token=flops,
    )


def read_pretrained_config(model: ModelSpec, directory: Path) -> Any:
    """The transformers config of the pretrained directory named by spec.model.pretrained."""
    assert model.pretrained is not None
    return read_config(directory, trust_remote_code=model.pretrained.trust_remote_code)


def tokenizer_extends(model_tokenizer: str | Path, dataset_tokenizer: str | Path) -> bool:
    """Whether the dataset's tokenizer maps every string of the model's tokenizer to the same id (equal, or the
    model's vocabulary extended with new tokens after the old ones)."""
    base = Tokenizer.from_file(str(model_tokenizer)).get_vocab()
    data = Tokenizer.from_file(str(dataset_tokenizer)).get_vocab()
    return all(data.get(token) == index for token, index in base.items())


# Files of a save_pretrained tokenizer beside tokenizer.json (the DataPipeline writes them; chat_template.jinja when
# the tokenizer has a chat template).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def dataset_tokenizer(data_uri: str, tokenizer_file: str, special_token_ids: dict[str, int | None], tmp: Path) -> Any:
    """The dataset's tokenizer as a transformers tokenizer, for checkpoints and exports: its save_pretrained form
    (special tokens, chat template) when the DataPipeline wrote one, else built over tokenizer.json with the
    manifest's special token ids."""
    from transformers import AutoTokenizer

    from ..models.export import hf_tokenizer

    directory = tmp / "dataset-tokenizer"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(storage.read_text(storage.join(data_uri, tokenizer_file)))
    if not storage.exists(storage.join(data_uri, TOKENIZER_SIDE_FILES[0])):
        return hf_tokenizer(directory / "tokenizer.json", special_token_ids)
    for name in TOKENIZER_SIDE_FILES:
        uri = storage.join(data_uri, name)
        if storage.exists(uri):
            (directory / name).write_text(storage.read_text(uri))
    return AutoTokenizer.from_pretrained(str(directory))


def pretrained_local_dir(uri: str, cache_dir: str | Path) -> Path:
    """A local directory with the pretrained model (downloaded into cache_dir when on an object store)."""
    return local_model_dir(uri, cache_dir)


def parent_job(directory: Path) -> str | None:
    """The TrainingJob that exported a pretrained directory (its kubeforge.json), if it came from kubeforge."""
    info = directory / INFO_FILE
    if not info.is_file():
        return None
    return json.loads(info.read_text()).get("trainingJob")


def build_network(
    plan: ModelPlan,
    model: ModelSpec,
    *,
    pretrained_dir: Path | None = None,
    for_training: bool = True,
) -> nn.Module:
    """The network to train: from scratch (initialised with spec.model.init) or from the pretrained directory,
    the vocabulary grown to the plan's, gradient checkpointing when asked, wrapped with LoRA when lora is set."""
    config = plan.hf_config()
    lora = model.lora
    quantization = lora.quantization if lora else None
    if pretrained_dir is not None:
        spec = model.pretrained
        assert spec is not None
        network = load_pretrained(
            pretrained_dir,
            task=plan.task,
            num_labels=plan.num_labels,
            torch_dtype=spec.torch_dtype,
            attn_implementation=spec.attn_implementation,
            trust_remote_code=spec.trust_remote_code,
            quantization=quantization,
            config_overrides=plan.label_fields(),
        )
        resize_vocabulary(network, config.vocab_size)
        if network.config.pad_token_id is None:
            network.config.pad_token_id = plan.pad_token_id
    else:
        network = build_model(config, task=plan.task, init=plan.init)
    if for_training and model.gradient_checkpointing:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        network.config.use_cache = False
    if lora is None:
        return network
    return apply_lora(
        network,
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
        task=plan.task,
        quantized=quantization is not None,
    )


def qlora_problem(plan: ModelPlan, *, use_gpu: bool) -> str | None:
    """Why QLoRA (a 4-bit NF4 base through bitsandbytes) cannot run here, or None."""
    import importlib.util

    if not use_gpu:
        return "QLoRA loads the base in 4 bits through bitsandbytes, which needs CUDA GPUs: set workers.gpu or drop it"
    if plan.pretrained_uri is None:
        return "QLoRA quantizes pretrained weights: set spec.model.pretrained"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed in the trainer image"
    return None


def check_lora(resource_name: str, plan: ModelPlan, lora: LoraSpec | None, *, use_gpu: bool) -> None:
    """A SpecError when QLoRA is asked for without CUDA GPUs, or a LoRA target names no linear layer."""
    if lora is None:
        return
    if lora.quantization:
        problem = qlora_problem(plan, use_gpu=use_gpu)
        if problem:
            raise spec_error(resource_name, "spec.model.lora.quantization", f"{lora.quantization}: {problem}")
    try:
        targets = resolve_target_modules(plan.architecture, lora.target_modules)
    except ValueError as exc:
        raise spec_error(resource_name, "spec.model.lora.targetModules", str(exc)) from exc
    with torch.device("meta"):
        network = build_model(plan.hf_config(), task=plan.task)
    missing = missing_lora_targets(network, targets)
    if missing:
        raise spec_error(
            resource_name,
            "spec.model.lora.targetModules",
            f"{missing} match no linear layer of {plan.architecture} (e.g. q_proj, v_proj, c_attn)",
        )


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices and embeddings decay, biases and LayerNorm weights do not."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    groups: list[dict[str, Any]], training: TrainingSpec, *, use_gpu: bool, offload_optimizer: bool
) -> torch.optim.Optimizer:
    """spec.training's optimizer: AdamW, Adam (coupled L2 decay) or SGD with momentum; DeepSpeed's CPU Adam when
    the optimizer state is offloaded, torch's fused kernels on GPUs."""
    lr, betas = training.learning_rate, tuple(training.betas)
    if training.optimizer in ("adamw", "adam"):
        if offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, adamw_mode=training.optimizer == "adamw")
        cls = torch.optim.AdamW if training.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=lr, betas=betas, eps=1e-8, fused=use_gpu)
    return torch.optim.SGD(groups, lr=lr, momentum=training.momentum)


def gather_full_parameters(module: nn.Module, zero_stage: int, is_rank0: bool) -> dict[str, torch.Tensor] | None:
    """Every parameter of a DeepSpeed-wrapped module as a full fp32 CPU tensor on rank 0 (None elsewhere).

    A collective: all ranks must call it. Trainable parameters come from the optimizer's fp32 master copy where
    there is one (bf16/fp16 and ZeRO partitions), frozen ones from the module, gathered under ZeRO-3.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    gathered: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:
            if zero_stage == 3 and hasattr(param, "ds_id"):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    full = param.data.detach().clone()
            else:
                full = param.data.detach()
        if is_rank0:
            gathered[name] = full.float().cpu().clone()
    return gathered if is_rank0 else None


def load_parameters(network: nn.Module, parameters: dict[str, torch.Tensor]) -> None:
    """Copy gathered parameters into a network of the same structure; every parameter must be covered (tied ones
    under either name). Raises ValueError naming what is missing or mis-shaped."""
    params = dict(network.named_parameters(remove_duplicate=False))
    covered: set[int] = set()
    with torch.no_grad():
        for name, tensor in parameters.items():
            param = params.get(name)
            if param is None:
                continue
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name} has shape {tuple(tensor.shape)}, the model {tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))
            covered.add(id(param))
    missing = sorted({n for n, p in params.items() if id(p) not in covered})
    if missing:
        raise ValueError(f"the weights do not cover {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def save_checkpoint_model(
    directory: str | Path,
    plan: ModelPlan,
    model: ModelSpec,
    parameters: dict[str, torch.Tensor],
    *,
    tokenizer: Any,
    info: dict[str, Any],
) -> None:
    """Write the trained network as a Hugging Face directory (LoRA merged in) into a local checkpoint directory,
    and for LoRA runs the peft adapter alone into its adapter/ subdirectory (rank 0, CPU, fp32)."""
    torch.manual_seed(0)  # the fresh network's values are all overwritten; a fixed seed keeps this cheap and quiet
    with torch.device("cpu"):
        plain_spec = model.model_copy(update={"pretrained": None, "gradient_checkpointing": False})
        if model.lora is not None:
            plain_spec = plain_spec.model_copy(update={"lora": model.lora.model_copy(update={"quantization": None})})
        network = build_network(plan, plain_spec, for_training=False)
    load_parameters(network, parameters)
    network.eval()
    if model.lora is not None:
        adapter_dir = Path(directory) / ADAPTER_DIR
        network.peft_config["default"].base_model_name_or_path = plan.pretrained_uri
        save_hf_model(adapter_dir, network, tokenizer=tokenizer, info={**info, "baseModel": plan.pretrained_uri})
        network = merge_lora(network)
    save_hf_model(directory, network, tokenizer=tokenizer, info=info)


def is_adapter_dir(directory: Path) -> bool:
    """Whether a local directory holds a peft adapter (adapter_config.json)."""
    return (directory / ADAPTER_CONFIG_FILE).is_file()
