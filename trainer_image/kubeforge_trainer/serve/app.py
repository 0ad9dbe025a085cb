"""The Ray Serve application of a ModelDeployment: an HTTP ingress in front of one model deployment per version.

    HTTP -> Serve proxy -> ingress (validation, canary split, JSON/SSE, request metrics)
                             -> model-stable / model-canary (tokenisation, dynamic batching, KV-cached generation)

The ingress holds no model; model replicas batch concurrent requests with ``serve.batch`` and run the forward passes
in a worker thread so their event loop keeps taking requests and streaming tokens meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import torch
from kubeforge.api.modeldeployment import GenerationDefaults
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import storage
from ..models.export import INFO_FILE
from .engine import GenerationTask
from .metrics import IngressMetrics, ModelMetrics
from .protocol import (
    ApiError,
    Choice,
    ClassifyRequest,
    ClassifyResult,
    CompletionRequest,
    CompletionResult,
    StreamDelta,
    StreamEnd,
    StreamStart,
    classify_body,
    completion_body,
    completion_chunk,
    merge_deltas,
    parse_classify_request,
    parse_completion_request,
    parse_json_body,
    sse_event,
    usage,
)
from .routing import NO_VERSION, ROUTES, UNMATCHED_ROUTE, choose_version, pinned_version, route_label
from .runner import ModelRunner
from .settings import (
    CANARY,
    STABLE,
    AppSettings,
    ModelVersion,
    batch_limits,
    ingress_deployment_options,
    model_deployment_options,
    parse_app_args,
    parse_model_user_config,
    torch_threads,
)

log = logging.getLogger("kubeforge.serve")

VERSION_HEADER = "x-kubeforge-model-version"
RETRY_AFTER_S = 1
INFO_TIMEOUT_S = 30.0
_STREAM_DONE = object()


def error_response(error: ApiError) -> JSONResponse:
    """The JSON response of an ApiError (503s tell the client when to retry)."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def failure_error(exc: BaseException) -> ApiError:
    """The ApiError for a failed call to a model deployment: overload and unavailability are 503, the rest 500."""
    if isinstance(exc, BackPressureError):
        return ApiError(
            503, "the server is overloaded: its request queue is full; retry later", "overloaded_error", "queue_full"
        )
    if isinstance(exc, (DeploymentUnavailableError, RayActorError, TimeoutError)):
        return ApiError(503, "the model is not available right now; retry later", "unavailable_error", "unavailable")
    return INTERNAL_ERROR


INTERNAL_ERROR = ApiError(500, "the server failed on this request", "server_error", "internal_error")


@serve.deployment
class ModelServer:
    """Serves one model version: per-request checks against the model, dynamic batching, generation."""

    def __init__(self, model_name: str, version: ModelVersion, quantization: str, threads: int, device: str) -> None:
        torch.set_num_threads(threads)
        self.runner = ModelRunner.load(version.uri, version.version, quantization, device)
        self.metrics = ModelMetrics(model_name, self.runner.version)
        self.metrics.model_loaded(self.runner.load_seconds)
        self.defaults = GenerationDefaults()
        self._waiting: set[int] = set()
        log.info("loaded %s %s from %s in %.2fs", model_name, version.version, version.uri, self.runner.load_seconds)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching limits and generation defaults (changes need no replica restart)."""
        batching, self.defaults = parse_model_user_config(user_config)
        size, wait_s = batch_limits(batching)
        for handler in (self._generate_batch, self._classify_batch):
            handler.set_max_batch_size(size)
            handler.set_batch_wait_timeout_s(wait_s)

    async def info(self) -> dict[str, Any]:
        """Version, task, context length and the rest of what /v1/models shows."""
        return self.runner.info()

    async def complete(self, request: CompletionRequest) -> CompletionResult | ApiError:
        """A whole completion, or the 4xx error the model's checks give."""
        tasks = self.runner.prepare_completion(request, self.defaults)
        if isinstance(tasks, ApiError):
            return tasks
        await self._run(tasks)
        return CompletionResult(
            choices=tuple(Choice(t.index, t.text, t.finish_reason or "stop") for t in tasks),
            prompt_tokens=sum(len(t.prompt_ids) for t in tasks),
            completion_tokens=sum(len(t.token_ids) for t in tasks),
        )

    async def complete_stream(
        self, request: CompletionRequest
    ) -> AsyncIterator[ApiError | StreamStart | list[StreamDelta] | StreamEnd]:
        """An ApiError, or StreamStart, lists of text deltas as tokens come, then StreamEnd."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        tasks = self.runner.prepare_completion(
            request, self.defaults, lambda delta: loop.call_soon_threadsafe(events.put_nowait, delta)
        )
        if isinstance(tasks, ApiError):
            yield tasks
            return
        yield StreamStart(prompt_tokens=sum(len(t.prompt_ids) for t in tasks))
        # Deltas are queued from the generation thread before the run completes, so the sentinel comes last.
        running = asyncio.ensure_future(self._run(tasks))
        running.add_done_callback(lambda _: events.put_nowait(_STREAM_DONE))
        try:
            done = False
            while not done:
                pending = [await events.get()] + [events.get_nowait() for _ in range(events.qsize())]
                done = _STREAM_DONE in pending
                deltas = [e for e in pending if e is not _STREAM_DONE]
                if deltas:
                    yield deltas
            running.result()
            yield StreamEnd(sum(len(t.prompt_ids) for t in tasks), sum(len(t.token_ids) for t in tasks))
        finally:
            if not running.done():  # the client went away: stop generating for it
                for task in tasks:
                    task.cancelled = True
                running.cancel()

    async def classify(self, request: ClassifyRequest) -> ClassifyResult | ApiError:
        """Class probabilities of every input, or the 4xx error the model's checks give."""
        sequences = self.runner.prepare_classify(request)
        if isinstance(sequences, ApiError):
            return sequences
        probabilities = await self._track_waiting(sequences, [self._classify_batch(s) for s in sequences])
        for sequence in sequences:
            self.metrics.classified(len(sequence))
        return ClassifyResult(
            classifications=tuple(self.runner.to_classification(i, p) for i, p in enumerate(probabilities)),
            prompt_tokens=sum(len(s) for s in sequences),
        )

    async def _run(self, tasks: list[GenerationTask]) -> None:
        try:
            await self._track_waiting(tasks, [self._generate_batch(t) for t in tasks])
        except BaseException:
            for task in tasks:
                task.cancelled = True
            raise

    async def _track_waiting(self, items: list[Any], calls: list[Awaitable[Any]]) -> list[Any]:
        """Await the batched calls while counting their items as waiting until a batch takes them."""
        self._waiting.update(id(item) for item in items)
        self.metrics.queued(len(self._waiting))
        try:
            return list(await asyncio.gather(*calls))
        finally:
            self._dequeue(items)

    def _dequeue(self, items: list[Any]) -> None:
        self._waiting.difference_update(id(item) for item in items)
        self.metrics.queued(len(self._waiting))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _generate_batch(self, tasks: list[GenerationTask]) -> list[None]:
        self._dequeue(tasks)
        live = [t for t in tasks if not t.cancelled]
        if live:
            self.metrics.batch(len(live))
            await asyncio.to_thread(self.runner.generate, live)
            for task in live:
                self.metrics.generation(len(task.prompt_ids), task.created_at, task.token_times)
        return [None] * len(tasks)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _classify_batch(self, sequences: list[list[int]]) -> list[list[float]]:
        self._dequeue(sequences)
        self.metrics.batch(len(sequences))
        return await asyncio.to_thread(self.runner.classify, sequences)


@serve.deployment
class Ingress:
    """The HTTP API: validates requests, picks the version (canary split), calls it, answers JSON or SSE."""

    def __init__(
        self,
        name: str,
        versions: tuple[ModelVersion, ...],
        stable: DeploymentHandle,
        canary: DeploymentHandle | None = None,
    ) -> None:
        self.name = name
        self.versions = versions
        self.handles = {STABLE: stable, CANARY: canary}
        self.metrics = IngressMetrics(name)
        self.random = random.Random()
        self._info: dict[str, dict[str, Any]] = {}

    async def __call__(self, request: Request) -> Response:
        """Answer one HTTP request; every request is counted once, streams when they end."""
        started = time.perf_counter()
        route = route_label(_relative_path(request))
        version = NO_VERSION
        try:
            version, response = await self._dispatch(request, route, started)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            response = error_response(INTERNAL_ERROR)
        if not isinstance(response, StreamingResponse):  # a stream records itself when it ends
            self.metrics.request(version, route, response.status_code, time.perf_counter() - started)
        return response

    async def _dispatch(self, request: Request, route: str, started: float) -> tuple[str, Response]:
        if route == UNMATCHED_ROUTE:
            error = ApiError(404, f"no route {request.url.path}; see {', '.join(ROUTES)}", code="not_found")
            return NO_VERSION, error_response(error)
        if request.method not in ROUTES[route]:
            allowed = ", ".join(sorted(ROUTES[route]))
            message = f"{request.method} is not allowed on {route}; use {allowed}"
            error = ApiError(405, message, code="method_not_allowed")
            response = error_response(error)
            response.headers["Allow"] = allowed
            return NO_VERSION, response
        if route == "/health":
            return NO_VERSION, JSONResponse({"status": "ok"})
        if route in ("/ready", "/v1/models"):
            return NO_VERSION, await self._describe(route)
        body = parse_json_body(await request.body())
        if isinstance(body, ApiError):
            return NO_VERSION, error_response(body)
        if route == "/v1/completions":
            return await self._completions(body, route, started)
        return await self._classify(body)

    async def _describe(self, route: str) -> Response:
        try:
            infos = await self._version_infos()
        except Exception as exc:
            if route == "/ready":
                return JSONResponse({"status": "loading", "reason": type(exc).__name__}, status_code=503)
            return error_response(failure_error(exc))
        if route == "/ready":
            return JSONResponse({"status": "ready", "versions": [v.version for v in self.versions]})
        data = [
            {
                "id": self.name,
                "object": "model",
                "owned_by": "kubeforge",
                "name": self.name,
                "role": v.role,
                "trafficPercent": v.traffic_percent,
                **infos[v.role],
            }
            for v in self.versions
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _version_infos(self) -> dict[str, dict[str, Any]]:
        for version in self.versions:
            if version.role not in self._info:
                info = await asyncio.wait_for(self.handles[version.role].info.remote(), INFO_TIMEOUT_S)
                self._info[version.role] = info
        return self._info

    def _pick(self, requested_model: str | None) -> ModelVersion | ApiError:
        pinned = pinned_version(requested_model, self.name, self.versions)
        return pinned if pinned is not None else choose_version(self.versions, self.random.random())

    async def _completions(self, body: Any, route: str, started: float) -> tuple[str, Response]:
        request = parse_completion_request(body)
        if isinstance(request, ApiError):
            return NO_VERSION, error_response(request)
        version = self._pick(request.model)
        if isinstance(version, ApiError):
            return NO_VERSION, error_response(version)
        handle = self.handles[version.role]
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        headers = {VERSION_HEADER: version.version, "x-request-id": request_id}
        if not request.stream:
            result = await _settle(handle.complete.remote(request))
            if isinstance(result, ApiError):
                return version.version, error_response(result)
            body_out = completion_body(request_id, created, self.name, version.version, result)
            return version.version, JSONResponse(body_out, headers=headers)
        stream: DeploymentResponseGenerator = handle.options(stream=True).complete_stream.remote(request)
        first = await _settle(stream.__anext__())
        if isinstance(first, ApiError):
            stream.cancel()
            return version.version, error_response(first)
        chunks = self._sse(stream, request, request_id, created, version.version, route, started)
        headers["Cache-Control"] = "no-cache"
        return version.version, StreamingResponse(chunks, media_type="text/event-stream", headers=headers)

    async def _sse(
        self,
        stream: DeploymentResponseGenerator,
        request: CompletionRequest,
        request_id: str,
        created: int,
        version: str,
        route: str,
        started: float,
    ) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for item in stream:
                if isinstance(item, list):
                    chunk = completion_chunk(request_id, created, self.name, version, merge_deltas(item))
                    yield sse_event(chunk)
                elif isinstance(item, StreamEnd) and request.include_usage:
                    usage_object = usage(item.prompt_tokens, item.completion_tokens)
                    yield sse_event(completion_chunk(request_id, created, self.name, version, [], usage_object))
            finished = True
            yield sse_event("[DONE]")
        except Exception as exc:  # headers are sent: the error can only travel inside the stream
            log.exception("completion stream %s failed", request_id)
            yield sse_event(failure_error(exc).body())
        finally:
            if not finished:
                stream.cancel()
            self.metrics.request(version, route, 200, time.perf_counter() - started)

    async def _classify(self, body: Any) -> tuple[str, Response]:
        request = parse_classify_request(body)
        if isinstance(request, ApiError):
            return NO_VERSION, error_response(request)
        version = self._pick(request.model)
        if isinstance(version, ApiError):
            return NO_VERSION, error_response(version)
        result = await _settle(self.handles[version.role].classify.remote(request))
        if isinstance(result, ApiError):
            return version.version, error_response(result)
        return version.version, JSONResponse(
            classify_body(self.name, version.version, result), headers={VERSION_HEADER: version.version}
        )


async def _settle(call: Awaitable[Any]) -> Any:
    """The call's result, or the ApiError for its failure (backpressure, unavailable model, server error)."""
    try:
        return await call
    except Exception as exc:
        if not isinstance(exc, BackPressureError):
            log.exception("model call failed")
        return failure_error(exc)


def _relative_path(request: Request) -> str:
    """The request path below the application's route prefix."""
    path, root = request.scope.get("path", "/"), request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _read_version(uri: str) -> str:
    """The version recorded in a model directory's kubeforge.json."""
    version = json.loads(storage.read_text(storage.join(uri, INFO_FILE))).get("version")
    if not version:
        raise ValueError(f"{uri}/{INFO_FILE} has no version; pass args['modelVersion']")
    return str(version)


def build_from_settings(settings: AppSettings) -> serve.Application:
    """The Serve application graph for checked settings."""
    for version in settings.versions:
        if not storage.is_remote(version.uri) and not storage.exists(version.uri):
            raise ValueError(f"model directory {version.uri} does not exist")
    spec = settings.spec
    device = "cuda" if spec.resources.gpu else "cpu"
    model_options = model_deployment_options(spec)
    models = {
        v.role: ModelServer.options(name=f"model-{v.role}", **model_options).bind(
            settings.name, v, spec.quantization, torch_threads(spec), device
        )
        for v in settings.versions
    }
    ingress_options = ingress_deployment_options(spec, len(settings.versions))
    return Ingress.options(name="ingress", **ingress_options).bind(
        settings.name, settings.versions, models[STABLE], models.get(CANARY)
    )


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application a ModelDeployment's RayService runs (import_path kubeforge_trainer.serve:build_app)."""
    return build_from_settings(parse_app_args(args, read_version=_read_version))
