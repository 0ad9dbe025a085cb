"""int8 dynamic quantisation for CPU serving, and the held-out measures that show what it costs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .engine import classify


def _conv1d_as_linear(model: nn.Module) -> None:
    """Replace transformers' Conv1D layers (GPT-2's (in, out) linears) by equal nn.Linear ones, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight.data.copy_(child.weight.data.t())
                linear.bias.data.copy_(child.bias.data)
                setattr(parent, name, linear)


def quantize_int8(model: nn.Module) -> nn.Module:
    """The model with every linear layer replaced by a dynamically quantised int8 linear (weights int8, CPU only).

    Embeddings, LayerNorms and attention arithmetic stay fp32; activations are quantised per batch at run time.
    The tied output head becomes its own int8 copy; the input embedding keeps the fp32 weights.
    """
    _conv1d_as_linear(model)
    with warnings.catch_warnings():
        # torch deprecates the quantised tensor types in favour of torchao; the fbgemm/x86 kernels still ship.
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).eval()


@torch.inference_mode()
def perplexity(model: nn.Module, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> float:
    """exp(mean next-token cross-entropy) of a language model over equal-length token sequences."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = torch.tensor([list(s) for s in sequences[start : start + batch_size]], dtype=torch.long)
        logits = model(batch[:, :-1]).logits
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens)


def accuracy(
    model: nn.Module, sequences: Sequence[Sequence[int]], labels: Sequence[int], pad_token_id: int, batch_size: int = 16
) -> float:
    """Share of sequences whose most likely class is the label."""
    correct = 0
    for start in range(0, len(sequences), batch_size):
        probs = classify(model, sequences[start : start + batch_size], pad_token_id)
        correct += int((probs.argmax(dim=-1) == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / len(sequences)
