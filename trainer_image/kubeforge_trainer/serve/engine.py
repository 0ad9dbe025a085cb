"""Continuous batching over a transformers causal LM, and batched classification.

Requests join and leave the running batch at every decode step. The model is a transformers model (its own forward
and its own ``DynamicCache``); this module only schedules: a new request is prefilled on its own (left-padded with
the others admitted in the same step) and its cache is merged into the running batch's cache, left-padded to the
same length; finished or cancelled rows are dropped from the cache (``batch_select_indices``) and cache columns
that no remaining row uses are trimmed. Position ids are passed explicitly, so left padding never shifts them.
Sampling uses transformers' logits warpers (temperature, top-p).

Why not transformers' ``ContinuousBatchingManager``: it takes one GenerationConfig for all requests (a request
cannot ask for greedy decoding while another samples, nor bring its own seed), and needs paged attention.

No Ray and no HTTP here: the model server drives the engine from its own thread, tests call ``step()`` directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from .protocol import StreamDelta
from .text import text_step

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


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

    on_delta, when set, receives every piece of newly visible text (called from the engine's thread); on_done is
    called once when the task leaves the engine (finished, cancelled or failed: then with the exception).
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
    on_done: Callable[[BaseException | None], None] | None = None
    adapter: str | None = None  # a LoRA adapter loaded into the model; None is the base model

    def accept(self, token: int, now: float, eos_token_ids: frozenset[int], decode: Callable[[list[int]], str]) -> bool:
        """Take the sampled token; returns True when the task is finished (end of sequence, stop string, length)."""
        if token in eos_token_ids:
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

    def done(self, error: BaseException | None = None) -> None:
        """Tell the owner the task left the engine."""
        if self.on_done is not None:
            self.on_done(error)


def next_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """Next token of each row: argmax where temperature is 0, else a draw from transformers' tempered nucleus.

    Rows with the same (temperature, top_p) are warped together; rows sharing a generator object are drawn in one
    call, so a seeded request (its own generator) draws the same tokens whatever else is in the batch.
    """
    logits = logits.float()
    result = logits.argmax(dim=-1)
    groups: dict[tuple[float, float], list[int]] = {}
    for row, p in enumerate(params):
        if p.temperature > 0:
            groups.setdefault((p.temperature, p.top_p), []).append(row)
    if not groups:
        return result.tolist()
    probs = torch.zeros_like(logits)
    for (temperature, top_p), rows in groups.items():
        scores = TemperatureLogitsWarper(temperature)(None, logits[rows])
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        probs[rows] = torch.softmax(scores, dim=-1)
    by_generator: dict[int, list[int]] = {}
    for rows in groups.values():
        for row in rows:
            by_generator.setdefault(id(generators[row]), []).append(row)
    for rows in by_generator.values():
        rows.sort()
        result[rows] = torch.multinomial(probs[rows], 1, generator=generators[rows[0]]).flatten()
    return result.tolist()


def _pad_cache_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """A (B, H, T, D) cache tensor left-padded with zeros to T = width (the mask keeps the zeros out)."""
    missing = width - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros((*tensor.shape[:-2], missing, tensor.shape[-1]))
    return torch.cat([pad, tensor], dim=-2)


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


class ContinuousBatcher:
    """The running batch of one model: admit waiting tasks, sample a token for every row, drop finished rows.

    Thread-safe submit(); step() runs one scheduling step and is called by one thread only (run_forever, or a test).
    """

    def __init__(
        self,
        model: nn.Module,
        eos_token_ids: frozenset[int],
        pad_token_id: int,
        decode: Callable[[list[int]], str],
        default_generator: torch.Generator,
        max_batch_size: int = 16,
    ) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.decode = decode
        self.default_generator = default_generator
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self._waiting: list[GenerationTask] = []
        self._lock = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        # The running batch: tasks by row, their KV cache, attention mask (B, T), real lengths (B,), next logits.
        self.active: list[GenerationTask] = []
        self._generators: list[torch.Generator] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self.steps = 0
        self.on_step: Callable[[ContinuousBatcher], None] | None = None
        # Held for a whole step: adapters are loaded into or dropped from the model between steps only.
        self.model_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Tasks submitted and not yet in the running batch."""
        return len(self._waiting)

    @property
    def cache_tokens(self) -> int:
        """Cache slots held by the running batch (rows times columns, padding included)."""
        return 0 if self._mask is None else int(self._mask.numel())

    def submit(self, *tasks: GenerationTask) -> None:
        """Queue tasks (together: they join the same step when there is room); they join at the next step."""
        with self._lock:
            self._waiting.extend(tasks)
            self._lock.notify()

    def start(self) -> None:
        """Run the batch in a daemon thread until stop()."""
        self._thread = threading.Thread(target=self.run_forever, name="kubeforge-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current step."""
        with self._lock:
            self._stopped = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def run_forever(self) -> None:
        """Step while there is work; sleep while there is none."""
        while True:
            with self._lock:
                while not self._stopped and not self._waiting and not self.active:
                    self._lock.wait()
                if self._stopped:
                    return
            try:
                self.step()
            except Exception as exc:  # a failed forward fails the requests in it, not the engine
                self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            tasks, self._waiting = self.active + self._waiting, []
        self._reset()
        for task in tasks:
            task.done(exc)

    def _reset(self) -> None:
        self.active, self._generators = [], []
        self._cache = self._mask = self._lengths = self._logits = None

    def change_model(self, change: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the model by change(model) between two steps (the running batch and its cache carry on)."""
        with self.model_lock:
            self.model = change(self.model)

    def _adapter_args(self, tasks: Sequence[GenerationTask]) -> dict[str, list[str]]:
        """peft's per-row adapter choice (mixed-adapter batches) when the model carries LoRA adapters."""
        if not hasattr(self.model, "peft_config"):
            return {}
        return {"adapter_names": [t.adapter or BASE_ADAPTER for t in tasks]}

    def step(self) -> None:
        """Admit waiting tasks (prefill), choose every row's next token, drop finished rows, run one decode step."""
        with self.model_lock, torch.inference_mode():
            self._step()

    def _step(self) -> None:
        self._admit()
        if not self.active:
            return
        tokens = next_tokens(self._logits, [t.params for t in self.active], self._generators)
        now = time.perf_counter()
        keep = []
        for row, (task, token) in enumerate(zip(self.active, tokens, strict=True)):
            if task.cancelled or task.accept(token, now, self.eos_token_ids, self.decode):
                task.done()
            else:
                keep.append(row)
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self)
        if not keep:
            self._reset()
            return
        if len(keep) < len(self.active):
            self._select([self.active[r] for r in keep], keep)
        tokens = [tokens[r] for r in keep]
        self._decode(torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None])

    def _admit(self) -> None:
        with self._lock:
            room = max(0, self.max_batch_size - len(self.active))
            taken, self._waiting = self._waiting[:room], self._waiting[room:]
        new = [t for t in taken if not t.cancelled]
        cancelled = [t for t in taken if t.cancelled]
        for task in cancelled:
            task.done()
        if not new:
            return
        ids, mask = left_pad([t.prompt_ids for t in new], self.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **self._adapter_args(new)
        )
        lengths = mask.sum(-1)
        generators = [self._generator_for(t) for t in new]
        if not self.active:
            self.active, self._generators = new, generators
            self._cache, self._mask, self._lengths = out.cache, mask, lengths
            self._logits = out.logits[:, -1, :]
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, added in zip(self._cache.layers, out.cache.layers, strict=True):
            old.keys = torch.cat([_pad_cache_left(old.keys, width), _pad_cache_left(added.keys, width)])
            old.values = torch.cat([_pad_cache_left(old.values, width), _pad_cache_left(added.values, width)])
        self._mask = torch.cat([_pad_mask_left(self._mask, width), _pad_mask_left(mask, width)])
        self._lengths = torch.cat([self._lengths, lengths])
        self._logits = torch.cat([self._logits, out.logits[:, -1, :]])
        self.active, self._generators = self.active + new, self._generators + generators

    def _select(self, tasks: list[GenerationTask], rows: list[int]) -> None:
        """Keep only these rows; trim cache columns that were padding for every remaining row."""
        index = torch.tensor(rows, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask, self._lengths = self._mask[index], self._lengths[index]
        self._generators = [self._generators[r] for r in rows]
        self.active = tasks
        first = int(self._mask.any(dim=0).long().argmax())
        if first > 0:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self._mask = self._mask[:, first:]

    def _decode(self, step_ids: torch.Tensor) -> None:
        self._mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=1)
        out = self.model(
            input_ids=step_ids,
            attention_mask=self._mask,
            position_ids=self._lengths[:, None],
            cache=self._cache,
            use_cache=True,
            **self._adapter_args(self.active),
        )
        self._lengths = self._lengths + 1
        self._logits = out.logits[:, -1, :]

    def _generator_for(self, task: GenerationTask) -> torch.Generator:
        if task.params.seed is None:
            return self.default_generator
        return torch.Generator(device=self.device).manual_seed(task.params.seed)


def generate(batcher: ContinuousBatcher, tasks: Sequence[GenerationTask]) -> None:
    """Run tasks to completion on the calling thread (tests, benchmarks, in-process use): submit all, then step."""
    batcher.submit(*tasks)
    while batcher.active or batcher.waiting:
        batcher.step()


@torch.inference_mode()
def classify(model: nn.Module, sequences: Sequence[Sequence[int]], pad_token_id: int) -> torch.Tensor:
    """Class probabilities (B, num_labels) of right-padded token sequences."""
    device = next(model.parameters()).device
    ids, mask = right_pad(sequences, pad_token_id)
    logits = model(ids.to(device), attention_mask=mask.to(device))
    logits = getattr(logits, "logits", logits)  # a transformers model returns an output object
    return torch.softmax(logits.float(), dim=-1).cpu()
