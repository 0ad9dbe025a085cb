"""One loaded model version: loading (local or object store, optional int8), request checks against the model
(tokenisation, context length, task) and the calls into the batched engine."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from kubeforge.api.modeldeployment import GenerationDefaults
from kubeforge.wording import plural
from tokenizers import Tokenizer
from torch import nn

from .. import storage
from ..models import ModelConfig, load_model_dir, read_model_info
from ..models.export import INFO_FILE
from . import engine
from .engine import GenerationTask, SamplingParams
from .protocol import ApiError, Classification, ClassifyRequest, CompletionRequest, StreamDelta, context_error
from .quantize import quantize_int8

LANGUAGE_MODELING = "languageModeling"
CLASSIFICATION = "classification"


def wrong_task(task: str, route: str) -> ApiError:
    """400: the route does not fit the model's task."""
    right = "/v1/classify" if task == CLASSIFICATION else "/v1/completions"
    return ApiError(400, f"this model is a {task} model; {route} is not available, use {right}", code="wrong_task")


def resolve_sampling(
    request: CompletionRequest,
    defaults: GenerationDefaults,
    prompt_tokens: int,
    context_length: int,
    index: int | None,
) -> SamplingParams | ApiError:
    """The request's sampling parameters over the deployment defaults, checked against the context window.

    A prompt that fills the context is a 413. An explicit max_tokens that does not fit after the prompt is a 422;
    the default max_tokens is shortened to what fits instead (as vLLM does), so a default never fails a request.
    """
    if prompt_tokens == 0:
        which = f"prompt[{index}]" if index is not None else "prompt"
        return ApiError(422, f"'{which}' encodes to no tokens", code="empty_prompt", param="prompt")
    if prompt_tokens >= context_length:
        return context_error(prompt_tokens, context_length, index, "prompt")
    room = context_length - prompt_tokens
    if request.max_tokens is not None and request.max_tokens > room:
        return ApiError(
            422,
            f"prompt ({plural(prompt_tokens, 'token')}) plus max_tokens ({request.max_tokens}) exceeds the model's "
            f"context length of {plural(context_length, 'token')}; at most {plural(room, 'new token')} "
            f"{'fits' if room == 1 else 'fit'}",
            code="context_length_exceeded",
            param="max_tokens",
        )
    return SamplingParams(
        max_new_tokens=request.max_tokens if request.max_tokens is not None else min(defaults.max_tokens, room),
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
        stop=tuple(defaults.stop) if request.stop is None else request.stop,
        seed=request.seed,
    )


def check_classify_lengths(
    token_counts: Sequence[int], context_length: int, truncate: bool, is_list: bool
) -> ApiError | None:
    """422 for an input without tokens; 413 for one longer than the context unless truncation was asked for."""
    for i, count in enumerate(token_counts):
        index = i if is_list else None
        if count == 0:
            which = f"input[{i}]" if is_list else "input"
            return ApiError(422, f"'{which}' encodes to no tokens", code="empty_input", param="input")
        if count > context_length and not truncate:
            return context_error(count, context_length, index, "input")
    return None


def _load_local(directory: Path, device: str) -> tuple[nn.Module, ModelConfig, Tokenizer, str]:
    """(model, config, tokenizer, version recorded in kubeforge.json) of a local model directory."""
    model, config, tokenizer = load_model_dir(directory, device=device)
    info = read_model_info(directory) if (directory / INFO_FILE).is_file() else {}
    return model, config, tokenizer, str(info.get("version", ""))


def _unseeded_generator(device: str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.seed()  # from the OS: replicas must not all draw the same "random" tokens
    return generator


@dataclass(eq=False)
class ModelRunner:
    """A model version ready to serve."""

    model: nn.Module
    config: ModelConfig
    tokenizer: Tokenizer
    uri: str
    version: str
    quantization: str
    load_seconds: float
    generator: torch.Generator

    @classmethod
    def load(cls, uri: str, version: str, quantization: str = "none", device: str = "cpu") -> ModelRunner:
        """Fetch the model directory (local path, file:// or object store), load it, quantise if asked."""
        started = time.perf_counter()
        if storage.is_remote(uri):
            if not storage.exists(uri):
                raise FileNotFoundError(f"model directory {uri} does not exist")
            # Each replica downloads into its own directory (so replicas on a node never race on the same files)
            # and deletes it once the weights and tokenizer are in memory.
            with tempfile.TemporaryDirectory(prefix="kubeforge-model-") as tmp:
                model, config, tokenizer, recorded = _load_local(storage.download_dir(uri, tmp), device)
        else:
            model, config, tokenizer, recorded = _load_local(Path(storage.local_path(uri)), device)
        if quantization == "int8":
            model = quantize_int8(model)
        return cls(
            model=model,
            config=config,
            tokenizer=tokenizer,
            uri=uri,
            version=version or recorded,
            quantization=quantization,
            load_seconds=time.perf_counter() - started,
            generator=_unseeded_generator(device),
        )

    @property
    def task(self) -> str:
        """languageModeling or classification."""
        return self.config.task

    def info(self) -> dict[str, Any]:
        """What /v1/models tells about this version."""
        return {
            "version": self.version,
            "uri": self.uri,
            "task": self.task,
            "contextLength": self.config.context_length,
            "vocabSize": self.config.vocab_size,
            "labels": list(self.config.labels),
            "parameters": self.config.num_parameters(),
            "quantization": self.quantization,
            "loadSeconds": round(self.load_seconds, 3),
        }

    def encode(self, text: str, special_tokens: bool) -> list[int]:
        """Token ids of text."""
        return self.tokenizer.encode(text, add_special_tokens=special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids, special tokens left out."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prepare_completion(
        self,
        request: CompletionRequest,
        defaults: GenerationDefaults,
        on_delta: Callable[[StreamDelta], None] | None = None,
    ) -> list[GenerationTask] | ApiError:
        """One generation task per prompt, or the 4xx error of the first prompt the model cannot take."""
        if self.task != LANGUAGE_MODELING:
            return wrong_task(self.task, "/v1/completions")
        tasks = []
        for i, prompt in enumerate(request.prompts):
            # Prompts are continued, so no special tokens (BOS/EOS post-processing) are added around them.
            ids = self.encode(prompt, special_tokens=False)
            index = i if request.prompt_is_list else None
            params = resolve_sampling(request, defaults, len(ids), self.config.context_length, index)
            if isinstance(params, ApiError):
                return params
            tasks.append(GenerationTask(index=i, prompt_ids=ids, params=params, on_delta=on_delta))
        return tasks

    def generate(self, tasks: Sequence[GenerationTask]) -> None:
        """Run one batch of generation tasks to completion (blocking; the server calls it from a worker thread)."""
        engine.generate(
            self.model, tasks, self.config.eos_token_id, self.config.pad_token_id, self.decode, self.generator
        )

    def prepare_classify(self, request: ClassifyRequest) -> list[list[int]] | ApiError:
        """Token ids of each input (truncated to the context when asked), or a 4xx error."""
        if self.task != CLASSIFICATION:
            return wrong_task(self.task, "/v1/classify")
        # Documents are encoded as the data step encodes them: with the tokenizer's own post-processing.
        encoded = [self.encode(text, special_tokens=True) for text in request.inputs]
        error = check_classify_lengths(
            [len(ids) for ids in encoded], self.config.context_length, request.truncate, request.input_is_list
        )
        if error is not None:
            return error
        return [ids[: self.config.context_length] for ids in encoded]

    def classify(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities of each token sequence (blocking; call from a worker thread)."""
        return engine.classify(self.model, sequences, self.config.pad_token_id).tolist()

    def label_names(self) -> list[str]:
        """Names of the classes, by index."""
        return list(self.config.labels) or [str(i) for i in range(self.config.num_labels)]

    def to_classification(self, index: int, probabilities: Sequence[float]) -> Classification:
        """The Classification of one input from its class probabilities."""
        names = self.label_names()
        best = max(range(len(probabilities)), key=lambda i: probabilities[i])
        return Classification(
            index=index,
            label=names[best],
            score=float(probabilities[best]),
            scores={names[i]: float(p) for i, p in enumerate(probabilities)},
        )
