"""One loaded model version: loading (local or object store, optional int8), request checks against the model
(tokenisation, context length, task) and the calls into the batched engine."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from kubeforge.api.modeldeployment import GenerationDefaults, RequestLimits
from kubeforge.wording import plural
from torch import nn

from .. import storage
from ..models import read_model_info
from ..models.export import INFO_FILE
from . import engine
from .engine import ContinuousBatcher, GenerationTask, SamplingParams
from .loading import CLASSIFICATION, LANGUAGE_MODELING, LoadedModel, load_for_serving
from .protocol import (
    ApiError,
    ChatRequest,
    Classification,
    ClassifyRequest,
    CompletionRequest,
    StreamDelta,
    context_error,
)
from .quantize import quantize_int8
from .settings import AdapterRef


def wrong_task(task: str, route: str) -> ApiError:
    """400: the route does not fit the model's task."""
    right = "/v1/classify" if task == CLASSIFICATION else "/v1/completions"
    return ApiError(400, f"this model is a {task} model; {route} is not available, use {right}", code="wrong_task")


def resolve_sampling(
    request: CompletionRequest | ChatRequest,
    defaults: GenerationDefaults,
    prompt_tokens: int,
    context_length: int,
    index: int | None,
    limits: RequestLimits | None = None,
) -> SamplingParams | ApiError:
    """The request's sampling parameters over the deployment defaults, checked against the context window.

    A prompt that fills the context is a 413. An explicit max_tokens that does not fit after the prompt is a 422;
    the default max_tokens is shortened to what fits instead (as vLLM does), so a default never fails a request.
    """
    if prompt_tokens == 0:
        which = f"prompt[{index}]" if index is not None else "prompt"
        return ApiError(422, f"'{which}' encodes to no tokens", code="empty_prompt", param="prompt")
    limits = limits or RequestLimits()
    param = "messages" if isinstance(request, ChatRequest) else "prompt"
    if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
        which = f"{param}[{index}]" if index is not None else param
        return ApiError(
            400,
            f"'{which}' has {prompt_tokens} tokens; this deployment's limit (spec.limits.maxPromptTokens) is "
            f"{limits.max_prompt_tokens}",
            code="prompt_too_long",
            param=param,
        )
    if limits.max_tokens is not None and request.max_tokens is not None and request.max_tokens > limits.max_tokens:
        return ApiError(
            400,
            f"max_tokens is {request.max_tokens}; "
            f"this deployment's limit (spec.limits.maxTokens) is {limits.max_tokens}",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    if prompt_tokens >= context_length:
        return context_error(prompt_tokens, context_length, index, param)
    room = context_length - prompt_tokens
    if limits.max_tokens is not None:
        room = min(room, limits.max_tokens)
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


def _recorded_version(directory: Path) -> str:
    """The version in the directory's kubeforge.json ("" when it has none)."""
    return str(read_model_info(directory).get("version", "")) if (directory / INFO_FILE).is_file() else ""


def _fetch(uri: str, local: Path) -> Path:
    """A local directory with the files at uri (downloaded into local when remote)."""
    if storage.is_remote(uri):
        if not storage.exists(uri):
            raise FileNotFoundError(f"adapter directory {uri} does not exist")
        return Path(storage.download_dir(uri, str(local)))
    path = Path(storage.local_path(uri))
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{uri} is not a peft adapter directory: adapter_config.json is missing")
    return path


def _apply_adapters(model: nn.Module, drop: Sequence[str], load: dict[str, Path]) -> nn.Module:
    """The model with adapters dropped and loaded (a PeftModel once it has any; the plain base again with none)."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and set(drop) >= set(model.peft_config):
        # None of the loaded adapters stays (peft cannot delete its last one): back to the plain base model, its
        # LoRA layers removed and nothing merged; new ones load from scratch.
        model, drop = model.unload(), []
    for name in drop:
        model.delete_adapter(name)
    for name, directory in load.items():
        if isinstance(model, PeftModel):
            model.load_adapter(str(directory), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(directory), adapter_name=name)
        model.eval()
    return model


def _unseeded_generator(device: str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.seed()  # from the OS: replicas must not all draw the same "random" tokens
    return generator


@dataclass(eq=False)
class ModelRunner:
    """A model version ready to serve: the loaded model, its tokenizer, and (for language models) its running batch."""

    loaded: LoadedModel
    uri: str
    version: str
    quantization: str
    load_seconds: float
    generator: torch.Generator
    batcher: ContinuousBatcher | None = None
    adapters: dict[str, AdapterRef] = field(default_factory=dict)  # loaded LoRA adapters by name

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
                directory = storage.download_dir(uri, tmp)
                loaded, recorded = load_for_serving(directory, device), _recorded_version(directory)
        else:
            directory = Path(storage.local_path(uri))
            loaded, recorded = load_for_serving(directory, device), _recorded_version(directory)
        if quantization == "int8":
            loaded.model = quantize_int8(loaded.model)
        runner = cls(
            loaded=loaded,
            uri=uri,
            version=version or recorded,
            quantization=quantization,
            load_seconds=time.perf_counter() - started,
            generator=_unseeded_generator(device),
        )
        if loaded.task == LANGUAGE_MODELING:
            runner.batcher = ContinuousBatcher(
                loaded.model, loaded.eos_token_ids, loaded.pad_token_id, runner.decode, runner.generator
            )
        return runner

    @property
    def model(self) -> nn.Module:
        """The network."""
        return self.loaded.model

    @property
    def task(self) -> str:
        """languageModeling or classification."""
        return self.loaded.task

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus generated) one sequence may hold."""
        return self.loaded.context_length

    def info(self) -> dict[str, Any]:
        """What /v1/models tells about this version (never where it is stored)."""
        return {
            "version": self.version,
            "task": self.task,
            "format": self.loaded.format,
            "contextLength": self.context_length,
            "vocabSize": len(self.loaded.tokenizer),
            "labels": list(self.loaded.labels) if self.task == CLASSIFICATION else [],
            "parameters": self.loaded.num_parameters,
            "quantization": self.quantization,
            "chatTemplate": self.loaded.chat_template is not None,
            "loadSeconds": round(self.load_seconds, 3),
        }

    def encode(self, text: str, special_tokens: bool) -> list[int]:
        """Token ids of text."""
        return list(self.loaded.tokenizer.encode(text, add_special_tokens=special_tokens))

    def decode(self, ids: list[int]) -> str:
        """Text of token ids, special tokens left out."""
        return self.loaded.tokenizer.decode(ids, skip_special_tokens=True)

    def set_adapters(self, wanted: Sequence[AdapterRef]) -> list[str]:
        """Load, replace or drop LoRA adapters so exactly `wanted` are loaded, between two decode steps of the
        running batch (the base model stays loaded); returns what changed, for the log."""
        if self.batcher is None:
            if wanted:
                raise ValueError("LoRA adapters need a language model; this one is a classifier")
            return []
        wanted_by_name = {a.name: a for a in wanted}
        drop = [n for n, a in self.adapters.items() if wanted_by_name.get(n) != a]
        load = [a for a in wanted if self.adapters.get(a.name) != a]
        with tempfile.TemporaryDirectory(prefix="kubeforge-adapter-") as tmp:
            # Fetched and read outside the model lock; only the swap waits for the running step.
            fetched = {a.name: _fetch(a.uri, Path(tmp) / a.name) for a in load}
            self.batcher.change_model(lambda model: _apply_adapters(model, drop, fetched))
        for name in drop:
            del self.adapters[name]
        for adapter in load:
            self.adapters[adapter.name] = adapter
        return [f"-{n}" for n in drop if n not in wanted_by_name] + [f"+{a.name}@{a.version or '?'}" for a in load]

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int] | ApiError:
        """Token ids of the chat rendered with the model's chat template (generation prompt appended)."""
        if self.task != LANGUAGE_MODELING:
            return wrong_task(self.task, "/v1/chat/completions")
        if self.loaded.chat_template is None:
            return ApiError(
                400, "this model has no chat template; use /v1/completions with a plain prompt", code="no_chat_template"
            )
        try:
            text = self.loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may raise on messages it does not accept (e.g. roles out of order)
            return ApiError(400, f"the model's chat template rejected the messages: {exc}", param="messages")
        # The template writes the special tokens itself (BOS, role markers): none are added around it.
        return self.encode(text, special_tokens=False)

    def prepare_completion(
        self,
        request: CompletionRequest,
        defaults: GenerationDefaults,
        on_delta: Callable[[StreamDelta], None] | None = None,
        limits: RequestLimits | None = None,
    ) -> list[GenerationTask] | ApiError:
        """One generation task per prompt, or the 4xx error of the first prompt the model cannot take."""
        if self.task != LANGUAGE_MODELING:
            return wrong_task(self.task, "/v1/completions")
        tasks = []
        for i, prompt in enumerate(request.prompts):
            # Prompts are continued, so no special tokens (BOS/EOS post-processing) are added around them.
            ids = self.encode(prompt, special_tokens=False)
            index = i if request.prompt_is_list else None
            params = resolve_sampling(request, defaults, len(ids), self.context_length, index, limits)
            if isinstance(params, ApiError):
                return params
            tasks.append(GenerationTask(index=i, prompt_ids=ids, params=params, on_delta=on_delta))
        return tasks

    def prepare_chat(
        self,
        request: ChatRequest,
        prompt_ids: list[int],
        defaults: GenerationDefaults,
        on_delta: Callable[[StreamDelta], None] | None = None,
        limits: RequestLimits | None = None,
    ) -> list[GenerationTask] | ApiError:
        """The generation task of a chat whose messages are already rendered, or its 4xx error."""
        params = resolve_sampling(request, defaults, len(prompt_ids), self.context_length, None, limits)
        if isinstance(params, ApiError):
            return params
        return [GenerationTask(index=0, prompt_ids=prompt_ids, params=params, on_delta=on_delta)]

    def generate(self, tasks: Sequence[GenerationTask]) -> None:
        """Run generation tasks to completion on this thread (tests, benchmarks; the server uses the batcher's own
        thread instead)."""
        assert self.batcher is not None, "not a language model"
        engine.generate(self.batcher, tasks)

    def prepare_classify(self, request: ClassifyRequest) -> list[list[int]] | ApiError:
        """Token ids of each input (truncated to the context when asked), or a 4xx error."""
        if self.task != CLASSIFICATION:
            return wrong_task(self.task, "/v1/classify")
        # Documents are encoded as the data step encodes them: with the tokenizer's own post-processing.
        encoded = [self.encode(text, special_tokens=True) for text in request.inputs]
        error = check_classify_lengths(
            [len(ids) for ids in encoded], self.context_length, request.truncate, request.input_is_list
        )
        if error is not None:
            return error
        return [ids[: self.context_length] for ids in encoded]

    def classify(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities of each token sequence (blocking; call from a worker thread)."""
        return engine.classify(self.model, sequences, self.loaded.pad_token_id).tolist()

    def label_names(self) -> list[str]:
        """Names of the classes, by index."""
        return list(self.loaded.labels)

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
