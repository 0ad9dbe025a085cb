"""Batched inference on one loaded model: KV-cached generation of left-padded prompts, and classification.

No Ray and no HTTP here: the model server calls these from a worker thread, tests call them directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .protocol import StreamDelta
from .sampling import sample_next_tokens
from .text import text_step


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest): prompts aligned on the right so each row's next token is last."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), padded on the right (what the classifier expects)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass(frozen=True)
class SamplingParams:
    """How one prompt is continued, with the deployment's defaults already applied."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(eq=False)
class GenerationTask:
    """One prompt being continued: its parameters, the tokens and text produced so far, and timings.

    on_delta, when set, receives every piece of newly visible text (called from the generation thread).
    """

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[StreamDelta], None] | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    created_at: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    cancelled: bool = False

    def accept(self, token: int, now: float, eos_token_id: int | None, decode: Callable[[list[int]], str]) -> bool:
        """Take the sampled token; returns True when the task is finished (end of sequence, stop string, length)."""
        if token == eos_token_id:
            return self._finish("", "stop")
        self.token_ids.append(token)
        self.token_times.append(now)
        final = len(self.token_ids) >= self.params.max_new_tokens
        delta, stopped = text_step(decode(self.token_ids), len(self.text), self.params.stop, final)
        if stopped:
            return self._finish(delta, "stop")
        if final:
            return self._finish(delta, "length")
        if delta:
            self.text += delta
            if self.on_delta is not None:
                self.on_delta(StreamDelta(self.index, delta))
        return False

    def _finish(self, delta: str, reason: str) -> bool:
        self.text += delta
        self.finish_reason = reason
        if self.on_delta is not None:
            self.on_delta(StreamDelta(self.index, delta, reason))
        return True


def _take_rows(cache: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]


@torch.inference_mode()
def generate(
    model: nn.Module,
    tasks: Sequence[GenerationTask],
    eos_token_id: int | None,
    pad_token_id: int,
    decode: Callable[[list[int]], str],
    default_generator: torch.Generator,
) -> None:
    """Continue every task in one batch with a KV cache; finished and cancelled rows leave the batch as they end.

    Prompts are left-padded so all rows predict at the last column; the attention mask keeps padding out of
    attention and positions (the model derives position ids from it). Each task's max_new_tokens must fit its
    context: len(prompt) + max_new_tokens <= context_length.
    """
    active = [t for t in tasks if not t.cancelled and t.finish_reason is None]
    if not active:
        return
    device = next(model.parameters()).device
    generators = {id(t): _generator_for(t, default_generator, device) for t in active}
    ids, mask = left_pad([t.prompt_ids for t in active], pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    logits, cache = model(ids, attention_mask=mask)
    last = logits[:, -1, :]
    while True:
        temperatures = torch.tensor([t.params.temperature for t in active], device=device)
        top_ps = torch.tensor([t.params.top_p for t in active], device=device)
        tokens = sample_next_tokens(last, temperatures, top_ps, [generators[id(t)] for t in active]).tolist()
        now = time.perf_counter()
        keep = [
            row
            for row, (task, token) in enumerate(zip(active, tokens, strict=True))
            if not task.accept(token, now, eos_token_id, decode) and not task.cancelled
        ]
        if not keep:
            return
        if len(keep) < len(active):
            rows = torch.tensor(keep, device=device)
            cache, mask = _take_rows(cache, rows), mask.index_select(0, rows)
            active, tokens = [active[r] for r in keep], [tokens[r] for r in keep]
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
        step_ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
        logits, cache = model(step_ids, attention_mask=mask, past_key_values=cache)
        last = logits[:, -1, :]


def _generator_for(task: GenerationTask, default_generator: torch.Generator, device: torch.device) -> torch.Generator:
    if task.params.seed is None:
        return default_generator
    return torch.Generator(device=device).manual_seed(task.params.seed)


@torch.inference_mode()
def classify(model: nn.Module, sequences: Sequence[Sequence[int]], pad_token_id: int) -> torch.Tensor:
    """Class probabilities (B, num_labels) of right-padded token sequences."""
    device = next(model.parameters()).device
    ids, mask = right_pad(sequences, pad_token_id)
    logits = model(ids.to(device), attention_mask=mask.to(device))
    return torch.softmax(logits.float(), dim=-1).cpu()
