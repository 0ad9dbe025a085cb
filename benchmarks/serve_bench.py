"""Serving benchmark: what Ray Serve and the HTTP API add to a tiny model, and what dynamic batching buys.
A script, not a test:

    .venv/bin/python benchmarks/serve_bench.py            # writes benchmarks/results/serve.md

In one run, on one local Ray (2 CPUs, no dashboard), with the same workload everywhere (a fixed prompt, greedy,
max_tokens completion tokens):

* in process: the model server's own code path (tokenise, generate with the KV cache, decode) called directly, one
  request at a time, then in batches of `concurrency` (the ceiling batching can reach);
* the same generation behind a plain Starlette/uvicorn server in its own process, no Ray: what any Python HTTP
  server in front of this model pays on this machine;
* a bare Ray Serve echo deployment (reads the body, answers JSON): Ray Serve's own floor on this machine; the same
  echo waiting (asyncio.sleep) as long as the model takes in process: Serve's floor for a handler of that duration;
  the echo running the model's generation in a worker thread, as the app does (the fair floor: a handler that
  sleeps leaves the replica's GIL and a core free, one that generates does not); and the echo behind a second
  deployment (what a second hop costs);
* the inference app (kubeforge_trainer.serve) with batching, and with batching disabled.

HTTP load comes from an asyncio/aiohttp generator in this process at a fixed concurrency (keep-alive connections),
so client, proxy, replicas and model share the machine's cores: the figures are for this machine, not a cluster.
The one-at-a-time runs behind the latency target run first, with only the apps they compare deployed (idle
replicas of the other apps would add their background work on the same two cores); everything else runs after.
It also reports int8 dynamic quantisation: held-out perplexity and in-process latency against fp32.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import torch
from kubeforge.api.modeldeployment import GenerationDefaults
from kubeforge_trainer.serve.protocol import CompletionRequest
from kubeforge_trainer.serve.quantize import accuracy, perplexity
from kubeforge_trainer.serve.runner import ModelRunner

# The tiny model builders are test scaffolding (tests/support/tiny_models.py), not part of the shipped package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.tiny_models import build_tiny_chat_model, build_tiny_classifier, build_tiny_language_model

RESULTS = Path(__file__).resolve().parent / "results" / "serve.md"
TARGET_ADDED_P50_MS = 3.0
TARGET_BATCHING_SPEEDUP = 3.0
PROMPT = "Return a new list of the items in"
HOST = "127.0.0.1"
# The measured HTTP runs, one request at a time: phase 1 (the latency target), then phase 2 with every app up.
LATENCY_PHASE = (
    "plain_model",
    "echo",
    "echo_direct",
    "echo_model",
    "echo_model_direct",
    "unbatched",
    "unbatched_direct",
)
SECOND_PHASE = ("echo_wait", "echo_wait_direct", "echo2", "batched", "batched_direct")
# ... and at the benchmark's concurrency (phase 2).
CONCURRENT = ("echo", "echo_direct", "echo2", "unbatched", "unbatched_direct", "batched", "batched_direct")


@dataclass
class Run:
    """Latencies and wall time of one measured load."""

    name: str
    concurrency: int
    latencies: list[float]
    wall_s: float
    tokens: int

    @property
    def p50_ms(self) -> float:
        """Median latency in milliseconds."""
        return 1000 * statistics.median(self.latencies)

    @property
    def p99_ms(self) -> float:
        """99th percentile latency (nearest rank) in milliseconds."""
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(0.99 * len(ordered) + 0.5) - 1)]

    @property
    def throughput(self) -> float:
        """Requests per second."""
        return len(self.latencies) / self.wall_s


def in_process(runner: ModelRunner, max_tokens: int, requests: int, batch: int, name: str) -> Run:
    """The model server's code path without Ray or HTTP: `requests` requests in groups of `batch`."""
    request = CompletionRequest(prompts=(PROMPT,) * batch, prompt_is_list=True, max_tokens=max_tokens, temperature=0)
    latencies, tokens = [], 0
    started = time.perf_counter()
    for _ in range(requests // batch):
        begin = time.perf_counter()
        tasks = runner.prepare_completion(request, GenerationDefaults())
        runner.generate(tasks)
        latencies.extend([time.perf_counter() - begin] * batch)
        tokens += sum(len(t.token_ids) for t in tasks)
    return Run(name, batch, latencies, time.perf_counter() - started, tokens)


async def http_load(url: str, body: dict[str, Any], requests: int, concurrency: int, name: str) -> Run:
    """POST body `requests` times from `concurrency` workers; every answer must be 200."""
    latencies: list[float] = []
    tokens = 0
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, tokens
            while remaining > 0:
                remaining -= 1
                begin = time.perf_counter()
                async with session.post(url, json=body) as response:
                    payload = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"{name}: HTTP {response.status}: {payload}")
                latencies.append(time.perf_counter() - begin)
                tokens += payload.get("usage", {}).get("completion_tokens", 0)

        for _ in range(min(8, requests)):  # warm connections and replicas
            async with session.post(url, json=body) as response:
                await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Run(name, concurrency, latencies, wall, tokens)


def echo_app(waits: bool = False):  # -> ray.serve.Application
    """A bare Ray Serve deployment that reads the request body and answers a small JSON object.

    With `waits`, it first sleeps (asyncio) for the body's "wait_s" seconds: a handler that takes as long as a model.
    """
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class Echo:
        async def __call__(self, request: Request) -> JSONResponse:
            body = await request.body()
            if waits:
                await asyncio.sleep(json.loads(body)["wait_s"])
            return JSONResponse({"echo": len(body)})

    return Echo.bind()


def model_handler(model_dir: str, max_tokens: int):  # -> async (Request) -> JSONResponse
    """A handler that generates the benchmark's completion with the model in a worker thread, as the app does, and
    answers a small JSON object, without the app's validation, admission, batching, metrics and response body."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    torch.set_num_threads(1)  # as the app's replica with resources.cpu 1
    runner = ModelRunner.load(model_dir, "v1")
    completion = CompletionRequest(prompts=(PROMPT,), prompt_is_list=False, max_tokens=max_tokens, temperature=0)

    async def handle(request: Request) -> JSONResponse:
        body = await request.body()
        tasks = runner.prepare_completion(completion, GenerationDefaults())
        await asyncio.to_thread(runner.generate, tasks)
        return JSONResponse({"echo": len(body), "tokens": len(tasks[0].token_ids)})

    return handle


def model_echo_app(model_dir: str, max_tokens: int):  # -> ray.serve.Application
    """The model handler as a Ray Serve deployment: Serve's floor for this model."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class ModelEcho:
        def __init__(self) -> None:
            self.handle = model_handler(model_dir, max_tokens)

        async def __call__(self, request: Request) -> JSONResponse:
            return await self.handle(request)

    return ModelEcho.bind()


def plain_server(model_dir: str, max_tokens: int, port: int) -> None:
    """The model handler on a plain Starlette app under uvicorn, no Ray: what any Python HTTP server in front of
    this model pays on this machine (run in its own process, as a replica is)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/plain", model_handler(model_dir, max_tokens), methods=["POST"])])
    uvicorn.run(app, host=HOST, port=port, log_level="warning")


def start_plain_server(model_dir: str, max_tokens: int, port: int) -> subprocess.Popen:
    """plain_server in a child process; returns once it answers."""
    command = [sys.executable, __file__, "--plain-server", str(port), "--model-dir", model_dir]
    child = subprocess.Popen([*command, "--max-tokens", str(max_tokens)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return child
        except OSError:
            if child.poll() is not None:
                raise RuntimeError(f"the plain server exited with {child.returncode}") from None
            time.sleep(0.2)
    child.kill()
    raise RuntimeError(f"the plain server did not answer on port {port} within 60 s")


def two_hop_echo_app():  # -> ray.serve.Application
    """The echo behind a second deployment: what an ingress-in-front-of-model-deployments layout pays per request."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class Inner:
        async def length(self, size: int) -> int:
            return size

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class Outer:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, request: Request) -> JSONResponse:
            body = await request.body()
            return JSONResponse({"echo": await self.inner.length.remote(len(body))})

    return Outer.bind(Inner.bind())


def resource(name: str, model_dir: str, batching: bool, batch_size: int, max_tokens: int) -> dict[str, Any]:
    """The ModelDeployment of one benchmarked app: one replica with one CPU."""
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelUri": model_dir,
            "replicas": {"min": 1, "max": 1, "maxOngoingRequests": 2 * batch_size, "maxQueuedRequests": 1024},
            "resources": {"cpu": 1, "memory": "1Gi"},
            "batching": {"enabled": batching, "maxBatchSize": batch_size, "maxWaitMs": 5},
            "generation": {"maxTokens": max_tokens, "temperature": 0},
            # The replica answers on its own port; Serve's proxy still reaches it too (both are measured).
            "ingress": "direct",
        },
    }


def merged(name: str, runs: list[Run]) -> Run:
    """One Run from several rounds of the same measurement."""
    return Run(
        name,
        runs[0].concurrency,
        [x for run in runs for x in run.latencies],
        sum(run.wall_s for run in runs),
        sum(run.tokens for run in runs),
    )


def row(run: Run) -> str:
    """One markdown table row."""
    tokens = f"{run.tokens / run.wall_s:.0f}" if run.tokens else "-"
    return (
        f"| {run.name} | {run.concurrency} | {len(run.latencies)} | {run.p50_ms:.1f} | {run.p99_ms:.1f} "
        f"| {run.throughput:.1f} | {tokens} |"
    )


# ---- Chat: continuous batching against bare transformers generate (--chat) --------------------------------------

CHAT_SECTION = "<!-- chat benchmark -->"
CHAT_CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    """A TCP port free on HOST right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def chat_messages(i: int) -> list[dict[str, str]]:
    """The i-th benchmark conversation (prompts differ a little, as real traffic does)."""
    return [{"role": "user", "content": f"{PROMPT} list number {i}"}]


def bare_generate(model_dir: Path, requests: int, max_tokens: int) -> Run:
    """transformers' own generate, greedy, one request at a time, in this process: the baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    latencies, tokens = [], 0
    started = time.perf_counter()
    for i in range(requests):
        text = tokenizer.apply_chat_template(chat_messages(i), tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        begin = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        latencies.append(time.perf_counter() - begin)
        tokens += out.shape[1] - ids.shape[1]
    return Run("bare transformers generate, one at a time", 1, latencies, time.perf_counter() - started, tokens)


async def chat_load(url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> tuple[Run, list[float]]:
    """Streamed chat requests at a fixed concurrency: (the run, each request's time to first token)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "model": model,
                "messages": chat_messages(i),
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            begin = time.perf_counter()
            first = None
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                async for line in response.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                        first = time.perf_counter() - begin
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - begin)
            ttfts.append(first if first is not None else latencies[-1])

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    name = f"kubeforge chat, continuous batching, concurrency {concurrency}"
    return Run(name, concurrency, latencies, time.perf_counter() - started, tokens), ttfts


def run_chat_benchmark(args: argparse.Namespace, workdir: Path) -> str:
    """The chat benchmark's markdown section."""
    import ray
    from kubeforge_trainer.serve import serve_locally
    from safetensors.torch import load_file

    load_before = os.getloadavg()
    torch.set_num_threads(1)  # as the replica (resources.cpu 1): the same compute for both
    model_dir = build_tiny_chat_model(workdir / "chat", layers=args.chat_layers)
    baseline = bare_generate(model_dir, args.chat_requests, args.max_tokens)
    ray.init(num_cpus=2, include_dashboard=False)
    port = free_port()
    spec = {
        "modelUri": str(model_dir),
        "resources": {"cpu": 1, "memory": "1Gi"},
        "batching": {"enabled": True, "maxBatchSize": max(CHAT_CONCURRENCY)},
        "replicas": {"min": 1, "max": 1, "maxOngoingRequests": 64, "maxQueuedRequests": 64},
    }
    resource = {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"}}
    url = serve_locally({"resource": {**resource, "spec": spec}, "modelVersion": "v1"}, http_port=port)
    asyncio.run(chat_load(url, "chat", 8, 8, args.max_tokens))  # warm-up: first connections, first allocations
    runs = [asyncio.run(chat_load(url, "chat", args.chat_requests, c, args.max_tokens)) for c in CHAT_CONCURRENCY]
    ray.shutdown()
    params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())
    base_tps = baseline.tokens / baseline.wall_s
    lines = [
        CHAT_SECTION,
        "## Chat: continuous batching (`--chat`)",
        "",
        f"Recorded {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"`benchmarks/serve_bench.py --chat --chat-requests {args.chat_requests} "
        f"--max-tokens {args.max_tokens} --chat-layers {args.chat_layers}`.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, transformers {version('transformers')}, ray {version('ray')}; load average "
        f"{load_before[0]:.1f} before and {os.getloadavg()[0]:.1f} after (the machine is shared with other work, "
        "which the load average shows).",
        f"Model: random-weight Llama, {args.chat_layers} layers, hidden 64, {params:,} parameters, built by "
        "tests/support/tiny_models.py (Hugging Face directory, chat template). Workload: one-message "
        f"chats, greedy, up to {args.max_tokens} tokens (a random model may end earlier at EOS; tokens/s counts the "
        "tokens really generated). Baseline: transformers `generate` in this process, one request at a time, one torch "
        "thread. "
        "Served: the app on a local Ray Serve (one replica, `resources.cpu` 1, one torch thread, `maxBatchSize` 32), "
        "streamed chat requests from an aiohttp client on the same machine; TTFT is from sending the request to the "
        "first chunk with content.",
        "The sections above this one come from the full run (without `--chat`); a `--chat` run replaces only this "
        "section.",
        "",
        "| run | concurrency | requests | TTFT p50 ms | TTFT p99 ms | latency p50 ms | tokens/s | vs baseline |",
        "|---|---|---|---|---|---|---|---|",
        f"| {baseline.name} | 1 | {len(baseline.latencies)} | - | - | {baseline.p50_ms:.1f} | {base_tps:.0f} | 1.00x |",
    ]
    for run, ttfts in runs:
        tps = run.tokens / run.wall_s
        p50, p99 = 1000 * statistics.median(ttfts), 1000 * statistics.quantiles(ttfts, n=100)[98]
        lines.append(
            f"| {run.name} | {run.concurrency} | {len(run.latencies)} | {p50:.1f} | {p99:.1f} | {run.p50_ms:.1f} "
            f"| {tps:.0f} | {tps / base_tps:.2f}x |"
        )
    top = runs[-1][0].tokens / runs[-1][0].wall_s / base_tps
    met = "met" if top >= TARGET_BATCHING_SPEEDUP else "not met"
    lines += [
        "",
        f"Target: continuous batching at concurrency 32 >= {TARGET_BATCHING_SPEEDUP:.0f}x the tokens/s of bare "
        f"`generate` one request at a time: {top:.2f}x ({met}).",
        "",
    ]
    return "\n".join(lines)


def write_chat_section(output: Path, section: str) -> None:
    """Replace (or append) the chat section of the results file, keeping the rest."""
    text = output.read_text() if output.exists() else ""
    if CHAT_SECTION in text:
        text = text[: text.index(CHAT_SECTION)].rstrip() + "\n\n"
    elif text:
        text = text.rstrip() + "\n\n"
    output.write_text(text + section)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=200, help="requests in each one-at-a-time run")
    parser.add_argument("--concurrent", type=int, default=640, help="requests in each concurrent run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--max-tokens", type=int, default=48, help="completion tokens per request (the quickstart's maxTokens)"
    )
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the requests are split into")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--plain-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--chat", action="store_true", help="only the chat / continuous batching benchmark")
    parser.add_argument("--chat-requests", type=int, default=96, help="requests in each chat run")
    parser.add_argument("--chat-layers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.chat:
        with tempfile.TemporaryDirectory(prefix="kubeforge-chat-bench-") as workdir:
            section = run_chat_benchmark(args, Path(workdir))
        write_chat_section(args.output, section)
        print(section)
        return 0
    if args.plain_server:  # the child process of start_plain_server
        plain_server(args.model_dir, args.max_tokens, args.plain_server)
        return 0
    with tempfile.TemporaryDirectory(prefix="kubeforge-serve-bench-") as workdir:
        report = run_benchmark(args, Path(workdir))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    return 0


def run_benchmark(args: argparse.Namespace, workdir: Path) -> str:
    """Build the models in workdir, measure everything, and return the markdown report."""
    load_before = os.getloadavg()

    # The quickstart's network size: 2 layers, d_model 128.
    tiny = build_tiny_language_model(
        workdir / "model", steps=args.train_steps, n_layers=2, n_heads=4, d_model=128, context_length=128
    )
    model_dir = str(tiny.path)
    fp32 = ModelRunner.load(model_dir, "v1")
    int8 = ModelRunner.load(model_dir, "v1", quantization="int8")
    ppl = {"fp32": perplexity(fp32.model, tiny.heldout), "int8": perplexity(int8.model, tiny.heldout)}
    classifier = build_tiny_classifier(workdir / "classifier", steps=args.train_steps)
    pad = classifier.pad_token_id
    acc = {
        mode: accuracy(
            ModelRunner.load(str(classifier.path), "c1", quantization=mode).model,
            classifier.heldout,
            classifier.heldout_labels,
            pad,
        )
        for mode in ("none", "int8")
    }
    acc["majority"] = 1 - sum(classifier.heldout_labels) / len(classifier.heldout_labels)

    import ray
    from kubeforge_trainer.serve import serve_locally, stop_locally
    from kubeforge_trainer.serve.local import direct_ingress_port, enable_direct_ingress
    from ray import serve

    # Ray first: the in-process runs then share the machine with the same background processes as the servers.
    # With direct ingress enabled every app answers both through Serve's proxy and on its replica's own port.
    port = 18000 + os.getpid() % 1000
    enable_direct_ingress(port)
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": HOST, "port": port})
    body = {"prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0}
    k, rounds = args.concurrency, args.rounds
    n, c = args.sequential // rounds, args.concurrent // rounds

    torch.set_num_threads(1)  # what a replica with resources.cpu 1 uses
    in_process(fp32, args.max_tokens, 20, 1, "warm-up")
    labels = {
        "plain_model": "plain Starlette/uvicorn server running the model in a thread, no Ray",
        "echo": "ray-serve-echo",
        "echo_wait": "ray-serve-echo waiting the model's in-process p50",
        "echo_model": "ray-serve-echo running the model in a thread",
        "echo2": "two-hop echo",
        "batched": "kubeforge app, batched",
        "unbatched": "kubeforge app, unbatched",
    }
    builders = {
        "echo": echo_app,
        "echo_wait": lambda: echo_app(waits=True),
        "echo_model": lambda: model_echo_app(model_dir, args.max_tokens),
        "echo2": two_hop_echo_app,
    }
    urls: dict[str, str] = {}

    def deploy(key: str) -> None:
        if key in builders:
            serve.run(builders[key](), name=key, route_prefix=f"/{key}")
            urls[key] = f"http://{HOST}:{port}/{key}"
            if key != "echo2":  # (its inner deployment is what a second hop costs, measured through the proxy)
                urls[f"{key}_direct"] = f"http://{HOST}:{direct_ingress_port(key, f'/{key}', HOST)}/{key}"
        else:
            spec = resource(f"bench-{key}", model_dir, key == "batched", k, args.max_tokens)
            direct = serve_locally({"resource": spec, "modelVersion": "v1"}, http_port=port, route_prefix=f"/{key}")
            urls[key] = f"http://{HOST}:{port}/{key}/v1/completions"
            urls[f"{key}_direct"] = direct + "/v1/completions"

    def label(key: str) -> str:
        base = key.removesuffix("_direct")
        return labels[base] + (", direct ingress" if key != base else "")

    # Interleaved rounds: every measurement sees the same mix of the machine's (shared, drifting) load.
    rounds_of: dict[str, list[Run]] = {}

    def measure(
        local: dict[str, Callable[[], Run]],
        sequential: tuple[str, ...],
        concurrent: tuple[str, ...],
        bodies: dict[str, dict[str, Any]],
    ) -> None:
        """Each round: the in-process runs, then every app one request at a time, then at concurrency k."""
        for _ in range(rounds):
            for key, run in local.items():
                rounds_of.setdefault(key, []).append(run())
            for key in sequential:
                name = f"{label(key)}, sequential"
                sent = bodies.get(key.removesuffix("_direct"), body)
                rounds_of.setdefault(key, []).append(asyncio.run(http_load(urls[key], sent, n, 1, name)))
            for key in concurrent:
                name = f"{label(key)}, concurrency {k}"
                rounds_of.setdefault(f"{key}_c", []).append(asyncio.run(http_load(urls[key], body, c, k, name)))

    # Phase 1, the latency target: only what it compares is up (the in-process call, the plain server, Serve's
    # floors and the unbatched app), so idle replicas of the other apps add no background work on the two cores.
    plain = start_plain_server(model_dir, args.max_tokens, port - 1)
    atexit.register(plain.kill)
    urls["plain_model"] = f"http://{HOST}:{port - 1}/plain"
    for key in ("echo", "echo_model", "unbatched"):
        deploy(key)
    fp32_alone = {"inproc": lambda: in_process(fp32, args.max_tokens, n, 1, "in process, fp32")}
    measure(fp32_alone, LATENCY_PHASE, (), {})
    plain.kill()
    # Phase 2: everything else, all apps up. The waiting echo waits the model's in-process p50 from phase 1.
    for key in ("echo_wait", "echo2", "batched"):
        deploy(key)
    local = {
        "inproc_int8": lambda: in_process(int8, args.max_tokens, n, 1, "in process, int8"),
        "inproc_batched": lambda: in_process(fp32, args.max_tokens, c, k, f"in process, batches of {k}"),
    }
    waiting = {**body, "wait_s": merged("", rounds_of["inproc"]).p50_ms / 1000}
    measure(local, SECOND_PHASE, CONCURRENT, {"echo_wait": waiting})
    runs = {key: merged(measured[0].name, measured) for key, measured in rounds_of.items()}
    ratios = [
        b.throughput / u.throughput for b, u in zip(rounds_of["batched_c"], rounds_of["unbatched_c"], strict=True)
    ]
    for key in ("batched", "unbatched"):
        stop_locally(f"bench-{key}")
    serve.shutdown()
    ray.shutdown()

    return render(args, runs, ratios, ppl, acc, fp32.loaded.num_parameters, load_before, os.getloadavg())


def render(
    args: argparse.Namespace,
    runs: dict[str, Run],
    ratios: list[float],
    ppl: dict[str, float],
    acc: dict[str, float],
    parameters: int,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    """The markdown report."""
    inproc, echo, echo_direct = runs["inproc"], runs["echo"], runs["echo_direct"]
    paths = ("", "_direct")  # through Serve's proxy, and on the replica's own port
    added = {path: runs[f"unbatched{path}"].p50_ms - inproc.p50_ms for path in paths}
    added_batched = {path: runs[f"batched{path}"].p50_ms - inproc.p50_ms for path in paths}
    beyond_floor = {path: runs[f"unbatched{path}"].p50_ms - runs[f"echo_model{path}"].p50_ms for path in paths}
    beyond_plain = {path: runs[f"unbatched{path}"].p50_ms - runs["plain_model"].p50_ms for path in paths}
    beyond_wait = {path: runs[f"unbatched{path}"].p50_ms - runs[f"echo_wait{path}"].p50_ms for path in paths}
    speedup = {path: runs[f"batched{path}_c"].throughput / runs[f"unbatched{path}_c"].throughput for path in paths}
    met = {True: "met", False: "**not met**"}
    lines = [
        "# Serving benchmark (ModelDeployment runtime)",
        "",
        f"Recorded {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/serve_bench.py` "
        f"(`--sequential {args.sequential} --concurrent {args.concurrent} --concurrency {args.concurrency} "
        f"--max-tokens {args.max_tokens} --rounds {args.rounds}`): every measurement is split into {args.rounds} "
        "rounds, interleaved with the others, so drift in the machine's load reaches all of them alike.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, ray {version('ray')}; load average {load_before[0]:.1f} before and "
        f"{load_after[0]:.1f} after.",
        f"Model: GPT-2, 2 layers, d_model 128, 4 heads, context 128, {parameters:,} parameters (quickstart size), "
        f"trained {args.train_steps} steps on standard-library docstrings. Workload: prompt `{PROMPT}`, "
        f"greedy, {args.max_tokens} completion tokens per request. Each app: one model replica with one CPU "
        "(one torch thread), batching `maxBatchSize` "
        f"{args.concurrency}, `maxWaitMs` 5; the client runs on the same two cores. Every app is reached two ways "
        "in the same run: through Ray Serve's HTTP proxy (`spec.ingress: proxy`, the default) and on its replica's "
        "own port (Ray Serve direct ingress, `spec.ingress: direct`). Two phases: the one-at-a-time runs of the "
        "latency target (in process, the plain server, the bare and the model echo, the unbatched app) ran with "
        "only those apps deployed; everything else ran afterwards with all of them up (nine replicas and the "
        "proxy on two cores).",
        "",
        "| run | concurrency | requests | p50 ms | p99 ms | requests/s | tokens/s |",
        "|---|---|---|---|---|---|---|",
        "| **phase 1: the latency target** | | | | | | |",
        *(row(runs[key]) for key in ("inproc", *LATENCY_PHASE)),
        "| **phase 2: every app up** | | | | | | |",
        *(row(runs[key]) for key in ("inproc_int8", "inproc_batched", *SECOND_PHASE)),
        *(row(runs[f"{key}_c"]) for key in CONCURRENT),
        "",
        "## Against the targets",
        "",
        f"* Added p50 latency per request, one request at a time, against calling the model in process "
        f"({inproc.p50_ms:.1f} ms p50), without batching: **{added['_direct']:.1f} ms** with direct ingress, "
        f"{added['']:.1f} ms through Serve's proxy (with batching: {added_batched['_direct']:.1f} and "
        f"{added_batched['']:.1f} ms; a lone request may wait up to `maxWaitMs` for company). "
        f"Target ≤ {TARGET_ADDED_P50_MS:.0f} ms: direct ingress {met[added['_direct'] <= TARGET_ADDED_P50_MS]}, "
        f"proxy {met[added[''] <= TARGET_ADDED_P50_MS]}.",
        f"* This machine's floor for this model, without Ray: a plain Starlette/uvicorn server generating with the "
        f"model in a worker thread answers in {runs['plain_model'].p50_ms:.1f} ms p50, "
        f"{runs['plain_model'].p50_ms - inproc.p50_ms:.1f} ms over the in-process call (the HTTP exchange and the "
        "wake-ups of client and server sharing two cores). Beyond that floor the kubeforge app on Ray Serve adds "
        f"**{beyond_plain['_direct']:.1f} ms** with direct ingress and {beyond_plain['']:.1f} ms through the proxy "
        f"(target ≤ {TARGET_ADDED_P50_MS:.0f} ms: direct ingress "
        f"{met[beyond_plain['_direct'] <= TARGET_ADDED_P50_MS]}, "
        f"proxy {met[beyond_plain[''] <= TARGET_ADDED_P50_MS]}).",
        f"* Ray Serve's own floor: a bare echo deployment answers in {echo.p50_ms:.1f} ms p50 through the proxy and "
        f"{echo_direct.p50_ms:.1f} ms on its replica's port; the same echo waiting (asyncio.sleep) as long as the "
        f"model took in process answers in {runs['echo_wait'].p50_ms:.1f} and {runs['echo_wait_direct'].p50_ms:.1f} "
        f"ms. A sleeping handler leaves the replica's GIL and a core free; one that generates does not, and Serve's "
        "proxy path does more work in the replica while it runs: the same echo generating with the model in a "
        f"worker thread, as the app does, answers in {runs['echo_model'].p50_ms:.1f} and "
        f"{runs['echo_model_direct'].p50_ms:.1f} ms. Against that floor the inference app adds "
        f"{beyond_floor['_direct']:.1f} ms (direct) and {beyond_floor['']:.1f} ms (proxy) p50: validation, "
        "admission, the batch queue, metrics, the response body (against the sleeping echo: "
        f"{beyond_wait['_direct']:.1f} and {beyond_wait['']:.1f} ms).",
        f"* Why one deployment: the same echo behind a second deployment (an ingress in front of model deployments) "
        f"answers in {runs['echo2'].p50_ms:.1f} ms p50 instead of {echo.p50_ms:.1f} ms, and "
        f"{runs['echo2_c'].throughput:.0f} instead of {runs['echo_c'].throughput:.0f} requests/s at concurrency "
        f"{args.concurrency}.",
        f"* Batched against unbatched throughput at concurrency {args.concurrency}, through the proxy: "
        f"{runs['batched_c'].throughput:.1f} against {runs['unbatched_c'].throughput:.1f} requests/s, "
        f"**{speedup['']:.2f}×** (per round: {', '.join(f'{r:.2f}×' for r in ratios)}); with direct ingress "
        f"{runs['batched_direct_c'].throughput:.1f} against {runs['unbatched_direct_c'].throughput:.1f}, "
        f"**{speedup['_direct']:.2f}×**. Target ≥ {TARGET_BATCHING_SPEEDUP:.0f}×: "
        f"{met[min(speedup.values()) >= TARGET_BATCHING_SPEEDUP]}. "
        f"In process, batches of {args.concurrency} reach {runs['inproc_batched'].throughput:.1f} requests/s, "
        "the ceiling for this model on one thread.",
        "",
        "## int8 dynamic quantisation",
        "",
        f"Held-out perplexity (the 10% of the docstring token stream not trained on): fp32 {ppl['fp32']:.3f}, "
        f"int8 {ppl['int8']:.3f} ({100 * (ppl['int8'] / ppl['fp32'] - 1):+.2f}%). In-process p50 latency "
        f"fp32 {runs['inproc'].p50_ms:.2f} ms, int8 {runs['inproc_int8'].p50_ms:.2f} ms.",
        "",
        f"Classifier (GPT-2 + sequence head, 2 layers, d_model 64, {args.train_steps} steps; does a docstring line "
        f'mention "return"?), held-out accuracy: fp32 {acc["none"]:.4f}, int8 {acc["int8"]:.4f} '
        f"({100 * (acc['int8'] - acc['none']):+.2f} points; majority class {acc['majority']:.4f}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
