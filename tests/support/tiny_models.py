"""Tiny trained model directories built from local text (standard-library docstrings) in seconds, with no download.

Test scaffolding (not shipped): used by the serving tests and the serving benchmark. The directories have the
layout a TrainingJob exports (a Hugging Face save_pretrained directory plus kubeforge.json, models/export.py), so
serving them exercises the real loading path.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from kubeforge_trainer.models import save_hf_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

CORPUS_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email",
    "functools",
    "heapq",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "os",
    "pathlib",
    "pickle",
    "random",
    "re",
    "shutil",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "zipfile",
)
PAD, EOS = "<pad>", "<eos>"


@dataclass(frozen=True)
class TinyModel:
    """A built model directory and held-out data to evaluate it on."""

    path: Path
    context_length: int
    vocab_size: int
    pad_token_id: int
    heldout: list[list[int]]  # token sequences the model was not trained on
    heldout_labels: list[int]  # classifiers only
    train_loss: float


def docstring_lines(modules: tuple[str, ...] = CORPUS_MODULES) -> list[str]:
    """Non-empty docstring lines of standard-library modules and their public members, in a fixed order."""
    lines: list[str] = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        docs = [module.__doc__ or ""]
        for name, member in sorted(vars(module).items()):
            if not name.startswith("_") and (inspect.isclass(member) or inspect.isfunction(member)):
                docs.append(inspect.getdoc(member) or "")
        for doc in docs:
            lines.extend(stripped for line in doc.splitlines() if len(stripped := line.strip()) > 3)
    return list(dict.fromkeys(lines))


def train_tokenizer(lines: list[str], vocab_size: int, path: Path) -> Tokenizer:
    """A byte-level BPE tokenizer (ids 0 and 1 are <pad> and <eos>) trained on lines and saved to path."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.save(str(path))
    return tokenizer


def _train(
    model: torch.nn.Module,
    batches: Callable[[int], tuple[torch.Tensor, ...]],
    steps: int,
    lr: float,
    loss_of: Callable[..., torch.Tensor],
) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    recent: list[float] = []
    threads = torch.get_num_threads()
    # One thread: for a model this small, more threads only add synchronisation, and on a busy machine
    # spinning OpenMP workers slow training down many times over.
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            loss = loss_of(model, *batches(step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            recent = [*recent[-19:], float(loss.detach())]
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return sum(recent) / len(recent)


def _lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def _save(
    directory: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    version: str,
    metrics: dict[str, float],
) -> Path:
    info = {
        "version": version,
        "packageVersion": importlib.metadata.version("kubeforge"),
        "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
        "source": "tests/support/tiny_models.py",
    }
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS)
    return save_hf_model(directory, model, tokenizer=hf, info=info)


def _gpt2_config(tokenizer: Tokenizer, context_length: int, n_layers: int, n_heads: int, d_model: int) -> GPT2Config:
    """A tiny GPT-2 shape without dropout (training for a few hundred steps needs none)."""
    eos = tokenizer.token_to_id(EOS)
    return GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=context_length,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=tokenizer.token_to_id(PAD),
        eos_token_id=eos,
        bos_token_id=eos,
    )


def _prepare(directory: str | Path, seed: int, vocab_size: int) -> tuple[Path, list[str], Tokenizer]:
    """Seed torch, create the directory and train a tokenizer on the docstring lines: (directory, lines, tokenizer)."""
    torch.manual_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = docstring_lines()
    tokenizer_file = directory / "tokenizer.train.json"
    tokenizer = train_tokenizer(lines, vocab_size, tokenizer_file)
    tokenizer_file.unlink()  # save_pretrained writes the model directory's own tokenizer files
    return directory, lines, tokenizer


def build_tiny_language_model(
    directory: str | Path,
    version: str = "v1",
    steps: int = 300,
    seed: int = 0,
    n_layers: int = 2,
    n_heads: int = 2,
    d_model: int = 64,
    context_length: int = 64,
    vocab_size: int = 512,
    batch_size: int = 16,
) -> TinyModel:
    """Train a tiny transformers GPT-2 for `steps` AdamW steps on 90% of the docstring text; hold out the rest."""
    directory, lines, tokenizer = _prepare(directory, seed, vocab_size)
    stream = tokenizer.encode("\n".join(lines)).ids
    split = int(len(stream) * 0.9)
    window = context_length  # inputs of context_length - 1 tokens predict the next context_length - 1
    train_ids, test_ids = torch.tensor(stream[:split]), stream[split:]
    heldout = [test_ids[i : i + window] for i in range(0, len(test_ids) - window, window)]
    config = _gpt2_config(tokenizer, context_length, n_layers, n_heads, d_model)
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(seed)

    def batches(_: int) -> tuple[torch.Tensor]:
        starts = torch.randint(0, len(train_ids) - window, (batch_size,), generator=generator)
        return (torch.stack([train_ids[s : s + window] for s in starts.tolist()]),)

    loss = _train(model, batches, steps, 3e-3, _lm_loss)
    path = _save(directory, model, tokenizer, version, {"trainLoss": loss, "steps": steps})
    return TinyModel(path, context_length, config.vocab_size, config.pad_token_id, heldout, [], loss)


def build_tiny_classifier(
    directory: str | Path,
    version: str = "v1",
    steps: int = 150,
    seed: int = 0,
    context_length: int = 64,
    vocab_size: int = 512,
    batch_size: int = 16,
) -> TinyModel:
    """Train a tiny transformers GPT2ForSequenceClassification to tell docstring lines that mention "return" from
    the others."""
    rng = random.Random(seed)
    directory, lines, tokenizer = _prepare(directory, seed, vocab_size)
    labels = ["other", "returns"]
    examples = [(tokenizer.encode(line).ids[:context_length], int("return" in line.lower())) for line in lines]
    rng.shuffle(examples)
    split = int(len(examples) * 0.9)
    train, test = examples[:split], examples[split:]
    config = _gpt2_config(tokenizer, context_length, n_layers=2, n_heads=2, d_model=64)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    model = GPT2ForSequenceClassification(config)
    pad = config.pad_token_id

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen = [train[(step * batch_size + i) % len(train)] for i in range(batch_size)]
        width = max(len(ids) for ids, _ in chosen)
        ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in chosen])
        mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in chosen])
        return ids, mask, torch.tensor([label for _, label in chosen])

    def loss_of(net: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(ids, attention_mask=mask).logits, target)

    loss = _train(model, batches, steps, 2e-3, loss_of)
    path = _save(directory, model, tokenizer, version, {"trainLoss": loss, "steps": steps})
    test_ids, test_labels = [ids for ids, _ in test], [label for _, label in test]
    return TinyModel(path, context_length, config.vocab_size, pad, test_ids, test_labels, loss)


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}" + EOS + "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_chat_model(directory: str | Path, seed: int = 0, vocab_size: int = 512, layers: int = 2) -> Path:
    """A Hugging Face directory (save_pretrained) of a tiny random-weight Llama and a byte-level BPE tokenizer with a
    chat template; no training, no download. Returns the directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer(docstring_lines(CORPUS_MODULES[:8]), vocab_size, out / "bpe.json")
    (out / "bpe.json").unlink()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token=PAD, eos_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def build_tiny_lora_adapter(base_dir: str | Path, out: str | Path, seed: int) -> Path:
    """A LoRA adapter of a tiny chat model, random non-zero weights (peft save_pretrained): it changes answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=256, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(out))
    return Path(out)
