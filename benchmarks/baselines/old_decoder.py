"""The retired kubeforge decoder (formerly kubeforge_trainer/models/gpt.py), kept only as train_bench.py's baseline.

Training and serving use transformers models (one model path, issue #21); this hand-written GPT-2-shaped decoder
is not shipped and nothing but the benchmark's "old decoder against transformers" comparison imports it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; saved as config.json next to the weights."""

    vocab_size: int
    task: str = "languageModeling"  # or "classification"
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 256
    context_length: int = 256
    dropout: float = 0.0
    init: str = "gpt2"  # gpt2 | xavier | kaiming
    num_labels: int = 0
    labels: list[str] = field(default_factory=list)
    pad_token_id: int = 0
    eos_token_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from to_dict() output, ignoring keys this version does not know."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def num_parameters(self) -> int:
        """Parameters of the network (tied embeddings counted once)."""
        d, layer = self.d_model, 12 * self.d_model**2 + 13 * self.d_model
        head = self.num_labels * d + self.num_labels if self.task == "classification" else 0
        return self.vocab_size * d + self.context_length * d + self.n_layers * layer + 2 * d + head

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), PaLM-style: 6N + 12·L·d·T."""
        n = self.num_parameters() - self.context_length * self.d_model
        return 6 * n + 12 * self.n_layers * self.d_model * self.context_length


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention through scaled_dot_product_attention, with an optional KV cache."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        drop = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=past is None and t > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc2 = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln1(x), mask, past)
        x = x + self.drop(a)
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh")))
        return x, kv


class GPT(nn.Module):
    """Decoder-only language model with tied input/output embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        init_weights(self, cfg)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Final hidden states (B, T, d) and the updated KV cache.

        attention_mask is (B, past + T) with 1 for real tokens and 0 for padding (left padding for batched
        generation); position_ids default to the running position after the cache.
        """
        b, t = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        last_position = None
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
            else:
                position_ids = torch.arange(past_len, past_len + t, device=input_ids.device).expand(b, t)
                last_position = past_len + t - 1  # known on the host: no GPU sync per training step
        if last_position is None:
            last_position = int(position_ids.max())
        if last_position >= self.config.context_length:
            raise ValueError(f"sequence longer than the context length {self.config.context_length}")
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        mask = None
        if attention_mask is not None:
            causal = torch.ones(t, past_len + t, dtype=torch.bool, device=x.device).tril(past_len)
            mask = (causal[None, :, :] & attention_mask[:, None, :].bool())[:, None, :, :]
            # A row of all-padding queries would give NaN; let padded query rows attend to themselves.
            diag = torch.zeros(t, past_len + t, dtype=torch.bool, device=x.device)
            diag[torch.arange(t), past_len + torch.arange(t)] = True
            mask = mask | diag[None, None]
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, past_key_values[i] if past_key_values else None)
            new_cache.append(kv)
        return self.ln_f(x), new_cache

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, T, vocab) and the KV cache."""
        h, cache = self.hidden_states(input_ids, attention_mask, past_key_values, position_ids)
        return self.lm_head(h), cache


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """GPT-2 scaled normal, Xavier or Kaiming initialisation of linear and embedding weights."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if cfg.init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            elif cfg.init == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                std = 0.02
                if name.endswith(("attn.proj", "fc2")):  # residual projections, scaled by depth (GPT-2)
                    std = 0.02 / math.sqrt(2 * cfg.n_layers)
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
