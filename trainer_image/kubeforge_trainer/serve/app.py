"""The Ray Serve application of a ModelDeployment: one deployment whose replicas answer HTTP and run the models.

    HTTP -> Serve proxy -> server replica: validation, canary split, admission (bounded queue),
                                           per-version dynamic batching, KV-cached generation, JSON / SSE, metrics

Each replica loads every version behind the endpoint (the stable model and, with spec.canary, the canary), so a
request costs one proxy-to-replica hop whichever version answers it, and both versions are measured the same way.
The forward passes run in a worker thread, so the replica's event loop keeps taking requests and streaming tokens.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
from kubeforge.api.modeldeployment import GenerationDefaults, RequestLimits
from kubeforge.constants import ENV_SERVE_API_KEYS
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import storage
from ..models.export import INFO_FILE
from .admission import Admission, AdmissionGate
from .batching import DynamicBatcher
from .engine import ContinuousBatcher, GenerationTask
from .metrics import ModelMetrics, RequestMetrics
from .playground import Playground, build_blocks, is_playground_path, mount
from .protocol import (
    MAX_BODY_BYTES,
    ApiError,
    ChatRequest,
    Choice,
    ClassifyRequest,
    ClassifyResult,
    CompletionRequest,
    CompletionResult,
    StreamDelta,
    chat_body,
    chat_chunk,
    classify_body,
    completion_body,
    completion_chunk,
    merge_deltas,
    parse_chat_request,
    parse_classify_request,
    parse_completion_request,
    parse_json_body,
    sse_event,
    usage,
)
from .routing import NO_VERSION, ROUTES, UNMATCHED_ROUTE, choose_version, pinned_version, route_label
from .runner import ModelRunner
from .settings import (
    STABLE,
    AdapterRef,
    AppSettings,
    ModelVersion,
    admission_limits,
    batch_limits,
    parse_app_args,
    parse_model_user_config,
    server_deployment_options,
    torch_threads,
)

log = logging.getLogger("kubeforge.serve")

VERSION_HEADER = "x-kubeforge-model-version"
RETRY_AFTER_S = 1
QUEUE_FULL = ApiError(
    503, "the server is overloaded: its request queue is full; retry later", "overloaded_error", "queue_full"
)
INTERNAL_ERROR = ApiError(500, "the server failed on this request", "server_error", "internal_error")
UNAUTHORIZED = ApiError(401, "missing or invalid API key: send Authorization: Bearer <key>", code="invalid_api_key")
OPEN_ROUTES = frozenset({"/health", "/ready"})  # probes need no key
CHAT_ROUTE = "/v1/chat/completions"
_STREAM_DONE = object()
PARSERS: dict[str, Callable[[Any], Any]] = {
    "/v1/completions": parse_completion_request,
    CHAT_ROUTE: parse_chat_request,
    "/v1/classify": parse_classify_request,
}


def error_response(error: ApiError) -> JSONResponse:
    """The JSON response of an ApiError (503s tell the client when to retry)."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class VersionServer:
    """One model version inside a replica: its model, its own batch queues, its metrics."""

    def __init__(self, model_name: str, version: ModelVersion, quantization: str, device: str) -> None:
        self.version = version
        self.runner = ModelRunner.load(version.uri, version.version, quantization, device)
        self.metrics = ModelMetrics(model_name, version.version)
        self.metrics.model_loaded(self.runner.load_seconds)
        self.defaults = GenerationDefaults()
        self.limits = RequestLimits()
        self._waiting: set[int] = set()
        # Generation: the version's continuous batch, stepped by its own thread. Classification: dynamic batches.
        if self.runner.batcher is not None:
            self.runner.batcher.on_step = self._stepped
            self.runner.batcher.start()
        self._classifications = DynamicBatcher(self._run_classify_batch, max_size=1, max_wait_s=0.0)
        log.info("loaded %s %s from %s in %.2fs", model_name, version.version, version.uri, self.runner.load_seconds)

    def configure(
        self, batch_size: int, wait_s: float, defaults: GenerationDefaults, limits: RequestLimits | None = None
    ) -> None:
        """Apply batching limits, generation defaults and per-request limits."""
        self.defaults = defaults
        self.limits = limits or RequestLimits()
        if self.runner.batcher is not None:
            self.runner.batcher.max_batch_size = batch_size  # read at each step's admission
        self._classifications.configure(batch_size, wait_s)

    def prepare(
        self, request: CompletionRequest | ChatRequest, on_delta: Callable[[StreamDelta], None] | None = None
    ) -> list[GenerationTask] | ApiError:
        """Generation tasks for the request, or the model's 4xx verdict on it (task, chat template, context)."""
        if isinstance(request, ChatRequest):
            prompt_ids = self.runner.chat_prompt_ids(list(request.messages))
            if isinstance(prompt_ids, ApiError):
                return prompt_ids
            return self.runner.prepare_chat(request, prompt_ids, self.defaults, on_delta, self.limits)
        return self.runner.prepare_completion(request, self.defaults, on_delta, self.limits)

    async def complete(self, tasks: list[GenerationTask], admission: Admission) -> CompletionResult:
        """Run the tasks through the batch queue to completion."""
        await self.run(tasks, admission)
        return CompletionResult(
            choices=tuple(Choice(t.index, t.text, t.finish_reason or "stop") for t in tasks),
            prompt_tokens=sum(len(t.prompt_ids) for t in tasks),
            completion_tokens=sum(len(t.token_ids) for t in tasks),
        )

    async def run(self, tasks: list[GenerationTask], admission: Admission) -> None:
        """Once admitted, submit every task to the running batch and wait for all; cancelled tasks stop generating."""
        try:
            await self._queued(tasks, admission, lambda: self._submit(tasks))
        except BaseException:
            for task in tasks:
                task.cancelled = True
            raise
        for task in tasks:
            self.metrics.generation(len(task.prompt_ids), task.created_at, task.token_times, task.adapter)

    def _submit(self, tasks: list[GenerationTask]) -> list[asyncio.Future[None]]:
        """Hand a request's tasks to the engine's thread at once (so they join the same step); each future resolves
        on this loop when its task leaves the batch."""
        loop = asyncio.get_running_loop()
        futures = []
        for task in tasks:
            future: asyncio.Future[None] = loop.create_future()

            def settle(error: BaseException | None, future: asyncio.Future[None] = future) -> None:
                if not future.done():
                    future.set_exception(error) if error is not None else future.set_result(None)

            task.on_done = lambda error, settle=settle: loop.call_soon_threadsafe(settle, error)
            futures.append(future)
        self._dequeue(tasks)
        assert self.runner.batcher is not None
        self.runner.batcher.submit(*tasks)
        return futures

    def _stepped(self, batcher: ContinuousBatcher) -> None:
        """After every decode step (engine thread): the running batch, the waiting sequences, the cache held."""
        self.metrics.batch(len(batcher.active))
        capacity = batcher.max_batch_size * self.runner.context_length
        self.metrics.engine(len(batcher.active), batcher.waiting, batcher.cache_tokens / capacity)

    async def classify(self, request: ClassifyRequest, admission: Admission) -> ClassifyResult | ApiError:
        """Class probabilities of every input, or the model's 4xx verdict on the request."""
        sequences = self.runner.prepare_classify(request)
        if isinstance(sequences, ApiError):
            return sequences
        probabilities = await self._queued(
            sequences, admission, lambda: [self._classifications.submit(s) for s in sequences]
        )
        for sequence in sequences:
            self.metrics.classified(len(sequence))
        return ClassifyResult(
            classifications=tuple(self.runner.to_classification(i, p) for i, p in enumerate(probabilities)),
            prompt_tokens=sum(len(s) for s in sequences),
        )

    async def _queued(
        self, items: list[Any], admission: Admission, submit: Callable[[], list[asyncio.Future[Any]]]
    ) -> list[Any]:
        """Wait for admission, then for the batched results; items count as queued until a batch takes them."""
        self._waiting.update(id(item) for item in items)
        self.metrics.queued(len(self._waiting))
        try:
            await admission.wait()
            futures = submit()
            # One future (one prompt, the usual case) is awaited as it is: gather would add an event loop step.
            return [await futures[0]] if len(futures) == 1 else list(await asyncio.gather(*futures))
        finally:
            self._dequeue(items)

    def _dequeue(self, items: list[Any]) -> None:
        self._waiting.difference_update(id(item) for item in items)
        self.metrics.queued(len(self._waiting))

    async def _run_classify_batch(self, sequences: list[list[int]]) -> list[list[float]]:
        self._dequeue(sequences)
        self.metrics.batch(len(sequences))
        return await asyncio.to_thread(self.runner.classify, sequences)


@serve.deployment
class InferenceServer:
    """The HTTP API of a ModelDeployment: every replica serves every version and answers every route."""

    def __init__(
        self,
        name: str,
        versions: tuple[ModelVersion, ...],
        quantization: str,
        threads: int,
        device: str,
        limits: tuple[int, int],
        playground: bool = False,
    ) -> None:
        torch.set_num_threads(threads)
        self.name = name
        self.versions = versions
        self.servers = {v.role: VersionServer(name, v, quantization, device) for v in versions}
        self.gate = AdmissionGate(*limits)
        self.metrics = RequestMetrics(name)
        self.random = random.Random()
        # Empty: no authentication. Set from the Secret named in spec.auth (the RayService's pod env).
        self.api_keys = [k.strip().encode() for k in os.environ.get(ENV_SERVE_API_KEYS, "").splitlines() if k.strip()]
        self.playground = Playground(self._build_playground) if playground else None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching limits, generation defaults and LoRA adapters from the spec (no replica restart: adapters
        are loaded into the running base model between two decode steps)."""
        config = parse_model_user_config(user_config)
        for server in self.servers.values():
            server.configure(*batch_limits(config.batching), config.generation, config.limits)
        changes = self.servers[STABLE].runner.set_adapters(config.adapters)
        if changes:
            log.info("adapters of %s: %s", self.name, " ".join(changes))

    async def __call__(self, request: Request) -> Response:
        """Answer one HTTP request; every request is counted once (a stream when it ends)."""
        started = time.perf_counter()
        path = _relative_path(request)
        if self.playground is not None and is_playground_path(path):  # the page logs in with a key itself
            return await self.playground.response()
        route = route_label(path)
        version = NO_VERSION
        try:
            version, response = await self._dispatch(request, route, started)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            response = error_response(INTERNAL_ERROR)
        if not isinstance(response, StreamingResponse):
            self.metrics.request(version, route, response.status_code, time.perf_counter() - started)
        return response

    async def _dispatch(self, request: Request, route: str, started: float) -> tuple[str, Response]:
        if route == UNMATCHED_ROUTE:
            error = ApiError(404, f"no route {request.url.path}; see {', '.join(ROUTES)}", code="not_found")
            return NO_VERSION, error_response(error)
        if request.method not in ROUTES[route]:
            allowed = ", ".join(sorted(ROUTES[route]))
            message = f"{request.method} is not allowed on {route}; use {allowed}"
            response = error_response(ApiError(405, message, code="method_not_allowed"))
            response.headers["Allow"] = allowed
            return NO_VERSION, response
        if self.api_keys and route not in OPEN_ROUTES and not self._authorized(request):
            response = error_response(UNAUTHORIZED)
            response.headers["WWW-Authenticate"] = "Bearer"
            return NO_VERSION, response
        if route == "/health":
            return NO_VERSION, JSONResponse({"status": "ok"})
        if route == "/ready":  # a replica only receives traffic once every model it serves is loaded
            adapters = [{"name": a.name, "version": a.version} for a in self._adapters().values()]
            ready = {"status": "ready", "versions": [v.version for v in self.versions], "adapters": adapters}
            return NO_VERSION, JSONResponse(ready)
        if route == "/v1/models":
            return NO_VERSION, JSONResponse(self._models_body())
        body = await read_json_body(request)
        if isinstance(body, ApiError):
            return NO_VERSION, error_response(body)
        return await self._answer(route, body, started)

    async def _answer(self, route: str, body: Any, started: float) -> tuple[str, Response]:
        """(version, response) for a decoded body on an API route: HTTP requests and the playground's chats."""
        parsed = PARSERS[route](body)
        if isinstance(parsed, ApiError):
            return NO_VERSION, error_response(parsed)
        picked = self._pick(parsed.model)
        if isinstance(picked, ApiError):
            return NO_VERSION, error_response(picked)
        chosen, adapter = picked
        server = self.servers[chosen.role]
        admission = self.gate.try_admit()
        if admission is None:
            return chosen.version, error_response(QUEUE_FULL)
        try:
            if isinstance(parsed, ClassifyRequest):
                if adapter is not None:
                    error = ApiError(400, f"{adapter!r} is a LoRA adapter of a language model", param="model")
                    return chosen.version, error_response(error)
                return chosen.version, await self._classify(server, parsed, admission)
            # A stream's admission travels with it and is released when the stream ends (then None here).
            response, admission = await self._generate(server, parsed, adapter, route, started, admission)
            return chosen.version, response
        finally:
            if admission is not None:
                admission.release()

    def _build_playground(self) -> Any:
        """The playground's ASGI app, with the generation defaults and limits the spec set by now."""
        stable = self.servers[STABLE]

        def models() -> list[str]:
            return list(dict.fromkeys(m["id"] for m in self._models_body()["data"]))

        blocks = build_blocks(self.name, models, self._playground_chat, stable.defaults, stable.limits)
        return mount(blocks, self.api_keys)

    async def _playground_chat(self, body: dict[str, Any]) -> Response:
        """A playground chat, answered and counted as a /v1/chat/completions request (a stream counts when it ends)."""
        started = time.perf_counter()
        version, response = await self._answer(CHAT_ROUTE, body, started)
        if not isinstance(response, StreamingResponse):
            self.metrics.request(version, CHAT_ROUTE, response.status_code, time.perf_counter() - started)
        return response

    def _models_body(self) -> dict[str, Any]:
        data = [
            {
                "id": self.name,
                "object": "model",
                "owned_by": "kubeforge",
                "name": self.name,
                "role": v.role,
                "trafficPercent": v.traffic_percent,
                **self.servers[v.role].runner.info(),
            }
            for v in self.versions
        ]
        data += [
            {"id": a.name, "object": "model", "owned_by": "kubeforge", "parent": self.name, "version": a.version}
            for a in self._adapters().values()
        ]
        return {"object": "list", "data": data}

    def _authorized(self, request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        given = key.strip().encode()
        # Compared in constant time against every key, so timing tells nothing about which prefix matched.
        matches = [hmac.compare_digest(given, k) for k in self.api_keys]
        return scheme.lower() == "bearer" and any(matches)

    def _adapters(self) -> dict[str, AdapterRef]:
        return self.servers[STABLE].runner.adapters

    def _pick(self, requested_model: str | None) -> tuple[ModelVersion, str | None] | ApiError:
        """(version, adapter or None) the request's model names: an adapter runs on the stable version."""
        if requested_model is not None and requested_model in self._adapters():
            return self.servers[STABLE].version, requested_model
        pinned = pinned_version(requested_model, self.name, self.versions, tuple(self._adapters()))
        if isinstance(pinned, ApiError):
            return pinned
        return (pinned if pinned is not None else choose_version(self.versions, self.random.random())), None

    @staticmethod
    def _headers(server: VersionServer, request_id: str | None = None) -> dict[str, str]:
        # No x-request-id here: Ray Serve's RequestIdMiddleware adds one to every response, and a second header
        # with another value confuses clients and proxies; the completion's own id is the body's "id".
        del request_id
        return {VERSION_HEADER: server.version.version}

    async def _generate(
        self,
        server: VersionServer,
        request: CompletionRequest | ChatRequest,
        adapter: str | None,
        route: str,
        started: float,
        admission: Admission,
    ) -> tuple[Response, Admission | None]:
        """A completion or chat answer, whole or streamed: (the response, the admission still to release here)."""
        chat = isinstance(request, ChatRequest)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        on_delta = (lambda delta: loop.call_soon_threadsafe(events.put_nowait, delta)) if request.stream else None
        tasks = server.prepare(request, on_delta)
        if isinstance(tasks, ApiError):
            return error_response(tasks), admission
        for task in tasks:
            task.adapter = adapter
        request_id, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        answered_by = adapter or self.name  # as OpenAI and vLLM do: the answer names the model the request picked
        if not request.stream:
            result = await server.complete(tasks, admission)
            body = (chat_body if chat else completion_body)(
                request_id, created, answered_by, server.version.version, result
            )
            return JSONResponse(body, headers=self._headers(server, request_id)), admission
        chunks = self._sse(
            server, tasks, events, request, (request_id, created, answered_by), route, started, admission
        )
        headers = {**self._headers(server, request_id), "Cache-Control": "no-cache"}
        return StreamingResponse(chunks, media_type="text/event-stream", headers=headers), None

    async def _classify(self, server: VersionServer, request: ClassifyRequest, admission: Admission) -> Response:
        result = await server.classify(request, admission)
        if isinstance(result, ApiError):
            return error_response(result)
        return JSONResponse(classify_body(self.name, server.version.version, result), headers=self._headers(server))

    async def _sse(
        self,
        server: VersionServer,
        tasks: list[GenerationTask],
        events: asyncio.Queue[Any],
        request: CompletionRequest | ChatRequest,
        ids: tuple[str, int, str],
        route: str,
        started: float,
        admission: Admission,
    ) -> AsyncIterator[bytes]:
        request_id, created, answered_by = ids  # every chunk's id, created time and model
        version = server.version.version
        running: asyncio.Future | None = None
        chat = isinstance(request, ChatRequest)
        chunk = chat_chunk if chat else completion_chunk
        try:
            if chat:  # OpenAI's first chat chunk names the role
                yield sse_event(chat_chunk(request_id, created, answered_by, version, [StreamDelta(0, "")], first=True))
            # Deltas are queued from the generation thread before the run completes, so the sentinel comes last.
            running = asyncio.ensure_future(server.run(tasks, admission))
            running.add_done_callback(lambda _: events.put_nowait(_STREAM_DONE))
            done = False
            while not done:
                pending = [await events.get()] + [events.get_nowait() for _ in range(events.qsize())]
                done = _STREAM_DONE in pending
                deltas = [e for e in pending if e is not _STREAM_DONE]
                if deltas:
                    yield sse_event(chunk(request_id, created, answered_by, version, merge_deltas(deltas)))
            running.result()
            if request.include_usage:
                totals = usage(sum(len(t.prompt_ids) for t in tasks), sum(len(t.token_ids) for t in tasks))
                yield sse_event(chunk(request_id, created, answered_by, version, [], totals))
            yield sse_event("[DONE]")
        except Exception:  # headers are sent: the error can only travel inside the stream
            log.exception("completion stream %s failed", request_id)
            yield sse_event(INTERNAL_ERROR.body())
        finally:
            if running is not None and not running.done():  # the client went away: stop generating for it
                for task in tasks:
                    task.cancelled = True
                running.cancel()
            admission.release()
            self.metrics.request(version, route, 200, time.perf_counter() - started)


async def read_json_body(request: Request) -> Any:
    """The decoded JSON body, or an ApiError; a body over MAX_BODY_BYTES is refused from its Content-Length before
    it is read, and a body without one is read only up to the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return ApiError(400, "Content-Length is not a number", code="invalid_request")
        if int(declared) > MAX_BODY_BYTES:
            message = f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}"
            return ApiError(413, message, code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return ApiError(413, f"request body is over the limit of {MAX_BODY_BYTES} bytes", code="body_too_large")
        chunks.append(chunk)
    return parse_json_body(b"".join(chunks))


def _relative_path(request: Request) -> str:
    """The request path below the application's route prefix."""
    path, root = request.scope.get("path", "/"), request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def read_model_version(uri: str) -> str:
    """The version recorded in a model directory's kubeforge.json."""
    version = json.loads(storage.read_text(storage.join(uri, INFO_FILE))).get("version")
    if not version:
        raise ValueError(f"{uri}/{INFO_FILE} has no version; pass args['modelVersion']")
    return str(version)


def build_from_settings(settings: AppSettings) -> serve.Application:
    """The Serve application for checked settings."""
    for version in settings.versions:
        if not storage.is_remote(version.uri) and not storage.exists(version.uri):
            raise ValueError(f"model directory {version.uri} does not exist")
    spec = settings.spec
    device = "cuda" if spec.resources.gpu else "cpu"
    return InferenceServer.options(name="server", **server_deployment_options(spec, settings.adapters)).bind(
        settings.name,
        settings.versions,
        spec.quantization,
        torch_threads(spec),
        device,
        admission_limits(spec),
        spec.playground,
    )


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application a ModelDeployment's RayService runs (import_path kubeforge_trainer.serve:build_app)."""
    return build_from_settings(parse_app_args(args, read_version=read_model_version))
