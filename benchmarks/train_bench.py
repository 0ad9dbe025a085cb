"""Training throughput of kubeforge's TrainingJob runtime: tokens/s and MFU per architecture and ZeRO stage, the
overhead of Ray Train against the same step loop under the plain `deepspeed` launcher, and kubeforge's old
home-made decoder (retired; kept as the baseline `benchmarks/baselines/old_decoder.py`) against the `transformers`
models of the same shape, all measured in one run.

Meant for one H100 (the issue's setting): GPT-2-124M (transformers `gpt2`: 12 layers, 12 heads, width 768,
vocabulary 50304) and a Llama-architecture model of similar size (same widths, SwiGLU MLP of 2048, untied output
layer), context 1024, bf16, micro-batch 16, fused AdamW, torch.compile, ZeRO-1/2/3:

    python benchmarks/train_bench.py                      # writes benchmarks/results/train.md
    python benchmarks/train_bench.py --stages 2 --no-compile

and on any machine in a tiny CPU mode that exercises every path in a minute or two:

    python benchmarks/train_bench.py --smoke

Both paths run the same code: the TrainingJob spec is resolved by `kubeforge_trainer.train.prepare_run`, the engine
is built by `worker.build_engine` and each micro-batch goes through `worker.forward_batch`. The Ray path is the real
`run_trainingjob` (Ray Data streaming, progress, the final checkpoint and export); its tokens/s are the ones it
logged (train.csv) after the warm-up steps. The plain path reads the same parquet shards in-process and times the
same steps. MFU is against the device's dense bf16 peak (989 TFLOP/s for an H100 SXM), with the PaLM FLOP count
(6N + 12·L·d·T per token) of `models.build.flops_per_token`. The decoder comparison is a plain single-process
PyTorch loop (AdamW, autocast on GPUs, the same compile setting) over the old GPT and transformers' GPT-2 and Llama.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "train.md"
ANCHOR = "plain PyTorch GPT-2-124M (bf16, SDPA, fused AdamW, torch.compile), batch 16x1024: 460k tokens/s = 40.0% MFU"
TARGETS = "MFU >= 40% with ZeRO-2 on one H100; Ray Train overhead <= 5%"


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting (the model, the batch and how long to run)."""

    n_layers: int
    n_heads: int
    d_model: int
    intermediate: int  # Llama's SwiGLU width (GPT-2's MLP is 4 x d_model)
    context: int
    vocab: int
    micro_batch: int
    steps: int
    warmup_steps: int  # excluded from the timing (allocator warm-up, torch.compile)
    log_interval: int
    precision: str
    gpus: int  # 0: CPU
    compile: bool

    @property
    def rows(self) -> int:
        """Train rows needed for steps optimizer steps on every worker."""
        return self.steps * self.micro_batch * max(1, self.gpus)


GPU = BenchConfig(12, 12, 768, 2048, 1024, 50304, 16, 80, 30, 10, "bf16", 1, True)
SMOKE = BenchConfig(1, 2, 32, 64, 32, 512, 4, 12, 4, 2, "bf16", 0, False)
# The CPU decoder comparison: big enough that the matrix products, not the Python overhead, dominate a step.
CPU_DECODERS = BenchConfig(4, 4, 256, 704, 128, 8192, 8, 12, 4, 2, "bf16", 0, False)
ARCHITECTURES = ("gpt2", "llama")


def model_spec(config: BenchConfig, architecture: str) -> dict[str, Any]:
    """spec.model of a benchmark TrainingJob: GPT-2's shape, or a Llama of similar size."""
    spec = {"architecture": architecture, "layers": config.n_layers, "heads": config.n_heads,
            "hiddenSize": config.d_model, "contextLength": config.context}  # fmt: skip
    if architecture == "llama":
        spec["intermediateSize"] = config.intermediate
    return spec


def write_synthetic_dataset(root: Path, config: BenchConfig, seed: int = 0) -> Path:
    """Random token rows of context + 1 tokens in the DataPipeline layout, with a word-level tokenizer file."""
    from kubeforge_trainer.train.synthetic import write_dataset
    from tokenizers import Tokenizer, models

    tokenizer_file = root / "bench-tokenizer.json"
    vocab = {f"t{i}": i for i in range(config.vocab)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(tokenizer_file))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, config.vocab, size=(config.rows, config.context + 1), dtype=np.int32)
    return write_dataset(
        root / "data",
        task="languageModeling",
        sequence_length=config.context + 1,
        tokenizer_file=tokenizer_file,
        vocab_size=config.vocab,
        splits={"train": rows.tolist()},
        pad_token_id=0,
        eos_token_id=None,
        rows_per_shard=512,
    )


def make_job(config: BenchConfig, stage: int, data: Path, checkpoints: Path, architecture: str = "gpt2") -> Any:
    """The TrainingJob both paths run: no evaluation, one checkpoint at the end."""
    from kubeforge.api import TrainingJob

    workers = {"count": max(1, config.gpus), "gpu": 1 if config.gpus else 0, "cpu": 4 if config.gpus else 1}
    workers["memory"] = "32Gi" if config.gpus else "1Gi"
    return TrainingJob.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": f"bench-{architecture}-zero{stage}"},
            "spec": {
                "dataRef": {"uri": str(data)},
                "model": model_spec(config, architecture),
                "training": {
                    "maxSteps": config.steps,
                    "microBatchSize": config.micro_batch,
                    "learningRate": 6e-4,
                    "warmupSteps": 10,
                    "schedule": "cosine",
                    "precision": config.precision,
                    "logIntervalSteps": config.log_interval,
                },
                "deepspeed": {"zeroStage": stage, "config": {"compile": {}} if config.compile else {}},
                "evaluation": {"test": False},
                "checkpoint": {"uri": str(checkpoints), "intervalSteps": 10**9, "keepLast": 1, "resume": False},
                "workers": workers,
            },
        }
    )


def peak(config: BenchConfig) -> tuple[str, float | None]:
    """(device name, dense peak FLOP/s of one device) for the run's precision."""
    from kubeforge_trainer.train.dsconfig import effective_precision
    from kubeforge_trainer.train.throughput import peak_flops

    if not config.gpus:
        return platform.processor() or "cpu", None
    import torch

    name = torch.cuda.get_device_name(0)
    return name, peak_flops(name, effective_precision(config.precision, True))


def hf_model(config: BenchConfig, architecture: str, meta: bool = False) -> tuple[Any, Any]:
    """(transformers model, its config) of the benchmark's shape (on the meta device: for counting only)."""
    import torch
    from kubeforge_trainer.models.build import build_config, build_model

    spec = model_spec(config, architecture)
    hf_config = build_config(architecture, vocab_size=config.vocab, hidden_size=config.d_model,
                             layers=config.n_layers, heads=config.n_heads,
                             intermediate_size=spec.get("intermediateSize"), context_length=config.context,
                             special_tokens={"bos_token_id": None, "eos_token_id": None})  # fmt: skip
    if meta:
        with torch.device("meta"):
            return build_model(hf_config), hf_config
    return build_model(hf_config), hf_config


def flops(config: BenchConfig, architecture: str) -> float:
    """Training FLOPs per token of the architecture at the benchmark's shape."""
    from kubeforge_trainer.models.build import flops_per_token

    model, hf_config = hf_model(config, "gpt2" if architecture == "old-gpt" else architecture, meta=True)
    return flops_per_token(model, hf_config, config.context)


def mfu(tokens_per_second: float, config: BenchConfig, architecture: str = "gpt2") -> float | None:
    """MFU of a throughput on this machine's devices."""
    from kubeforge_trainer.train.throughput import estimate_mfu

    return estimate_mfu(tokens_per_second, flops(config, architecture), max(1, config.gpus), peak(config)[1])


def run_ray(config: BenchConfig, stage: int, data: Path, workdir: Path, architecture: str) -> dict[str, Any]:
    """The real run_trainingjob; tokens/s from its logged windows after the warm-up steps."""
    import csv

    from kubeforge_trainer.progress import NullReporter
    from kubeforge_trainer.train import run_trainingjob

    checkpoints = workdir / f"ray-{architecture}-zero{stage}"
    started = time.monotonic()
    result = run_trainingjob(make_job(config, stage, data, checkpoints, architecture), str(data), NullReporter())
    with (checkpoints / "logs" / "train.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) > config.warmup_steps]
    rates = [float(r["tokens_per_second"]) for r in rows]
    # Equal windows of logIntervalSteps steps: total tokens over total time is the harmonic mean of the rates.
    tps = len(rates) / sum(1 / r for r in rates)
    return {"path": "ray-train", "model": architecture, "stage": stage, "tokens_per_second": tps,
            "steps": result["steps"], "wall_seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def run_plain(config: BenchConfig, stage: int, data: Path, workdir: Path, architecture: str) -> dict[str, Any]:
    """The same loop under `deepspeed` (one process per GPU, or one on CPU), as a subprocess."""
    result_file = workdir / f"plain-{architecture}-zero{stage}.json"
    job = make_job(config, stage, data, workdir / f"plain-{architecture}-zero{stage}", architecture)
    job_file = workdir / f"plain-{architecture}-zero{stage}-job.json"
    job_file.write_text(json.dumps(job.model_dump(by_alias=True, mode="json")))
    launcher = Path(sys.executable).with_name("deepspeed")
    command = [str(launcher), "--num_gpus", str(max(1, config.gpus)), "--master_port", str(29500 + stage)]
    command += [__file__, "--plain-worker", str(job_file), "--data", str(data), "--result", str(result_file)]
    command += ["--warmup-steps", str(config.warmup_steps)]
    # Ray gives each training worker OMP_NUM_THREADS = its CPUs; the plain process gets the same, for a fair match.
    env = {**os.environ, "OMP_NUM_THREADS": str(job.spec.workers.cpu)}
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO, env=env)
    out = json.loads(result_file.read_text())
    wall = round(time.monotonic() - started, 1)
    return {**out, "path": "deepspeed", "model": architecture, "stage": stage, "wall_seconds": wall}


def plain_worker(job_file: Path, data: str, result_file: Path, warmup_steps: int) -> None:
    """Entry point under the deepspeed launcher: the Ray worker's engine and step, without Ray."""
    import deepspeed
    import pyarrow.parquet as pq
    import torch
    from kubeforge.api import TrainingJob
    from kubeforge_trainer.train import prepare_run
    from kubeforge_trainer.train.modeling import ModelPlan
    from kubeforge_trainer.train.plan import TrainPlan
    from kubeforge_trainer.train.worker import build_engine, forward_batch

    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    job = TrainingJob.model_validate(json.loads(job_file.read_text()))
    settings, _ = prepare_run(job, data)
    plan, model_config = TrainPlan.from_dict(settings.plan), ModelPlan.from_dict(settings.model_config)
    if settings.use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.backends.cuda.matmul.allow_tf32 = True
    engine, _, _ = build_engine(job.spec, plan, model_config, settings.deepspeed_config, use_gpu=settings.use_gpu)
    rows = pq.read_table(Path(data) / "train").column("input_ids").to_numpy(zero_copy_only=False)[rank::world]
    micro = plan.micro_batch_size
    sync = torch.cuda.synchronize if settings.use_gpu else (lambda: None)
    tokens = 0
    for step in range(plan.total_steps):
        if step == warmup_steps:
            sync()
            started, tokens = time.perf_counter(), 0
        for _ in range(plan.gradient_accumulation_steps):
            start = (step * plan.gradient_accumulation_steps * micro) % (len(rows) - micro + 1)
            loss, _, n = forward_batch(engine, {"input_ids": rows[start : start + micro]}, model_config, "mean")
            engine.backward(loss)
            engine.step()
            tokens += n * world
    sync()
    elapsed = time.perf_counter() - started
    if rank == 0:
        result_file.write_text(json.dumps({"tokens_per_second": tokens / elapsed, "steps": plan.total_steps}))


def decoder_step_rate(config: BenchConfig, model_name: str, steps: int, warmup: int) -> dict[str, Any]:
    """Tokens/s of a plain single-process training loop (AdamW; bf16 autocast and fused AdamW on a GPU; compiled
    when config.compile) over one decoder: the old home-made GPT, or transformers' gpt2 / llama."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    device = "cuda" if config.gpus else "cpu"
    if model_name == "old-gpt":
        from baselines.old_decoder import GPT, ModelConfig  # the retired decoder, kept as the baseline

        legacy = ModelConfig(vocab_size=config.vocab, n_layers=config.n_layers, n_heads=config.n_heads,
                             d_model=config.d_model, context_length=config.context)  # fmt: skip
        model = GPT(legacy)
        forward = lambda m, ids: m(ids)[0]  # noqa: E731
    else:
        model, _ = hf_model(config, model_name)
        forward = lambda m, ids: m(input_ids=ids, use_cache=False).logits  # noqa: E731
    model.to(device).train()
    runner = torch.compile(model) if config.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=bool(config.gpus))
    ids = torch.randint(0, config.vocab, (config.micro_batch, config.context + 1), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bool(config.gpus))
    sync = torch.cuda.synchronize if config.gpus else (lambda: None)
    # On CPU: one thread and this process's CPU time, so the other load of a shared machine does not count.
    clock = time.perf_counter if config.gpus else time.process_time
    if not config.gpus:
        torch.set_num_threads(1)
    started = clock()
    for step in range(steps):
        if step == warmup:
            sync()
            started = clock()
        with autocast:
            logits = forward(runner, ids[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    tps = (steps - warmup) * config.micro_batch * config.context / (clock() - started)
    params = sum(p.numel() for p in model.parameters())
    return {"model": model_name, "tokens_per_second": tps, "parameters": params}


def decoder_markdown(config: BenchConfig, rows: list[dict[str, Any]]) -> list[str]:
    """The old-decoder-versus-transformers table."""
    old = next((r["tokens_per_second"] for r in rows if r["model"] == "old-gpt"), None)
    lines = [
        "",
        "Old home-made decoder against transformers, plain single-process loop: "
        f"{config.n_layers} layers, {config.n_heads} heads, width {config.d_model}, context {config.context}, "
        f"vocabulary {config.vocab}, micro-batch {config.micro_batch}, {config.steps} steps "
        f"(first {config.warmup_steps} not timed), torch.compile {'on' if config.compile else 'off'}"
        + ("; CPU: one thread, tokens per second of this process's CPU time." if not config.gpus else "."),
        "",
        "| model | parameters | tokens/s | MFU | vs old decoder |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        value = mfu(row["tokens_per_second"], config, row["model"])
        ratio = f"{row['tokens_per_second'] / old:.2f}x" if old else ""
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e6:.1f}M | {row['tokens_per_second']:,.0f} | "
            f"{f'{value:.1%}' if value is not None else '-'} | {ratio} |"
        )
    return lines


def results_markdown(
    config: BenchConfig,
    rows: list[dict[str, Any]],
    smoke: bool,
    decoders: tuple[BenchConfig, list[dict[str, Any]]] | None = None,
) -> str:
    """The results table, with the setting and the versions it ran with."""
    import deepspeed
    import ray
    import torch

    device, device_peak = peak(config)
    lines = [
        "# Training benchmark (`benchmarks/train_bench.py`)",
        "",
        f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {device}"
        + (f" ({config.gpus} GPU, dense peak {device_peak / 1e12:.0f} TFLOP/s)" if device_peak else ""),
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}.",
        "",
        f"Models: {', '.join(sorted({r['model'] for r in rows}))}; {config.n_layers} layers, {config.n_heads} heads, "
        f"width {config.d_model} (llama: SwiGLU {config.intermediate}), context {config.context}, "
        f"vocabulary {config.vocab}; micro-batch {config.micro_batch}; precision {config.precision}"
        f"{' (fp32 on CPU)' if not config.gpus else ''}; torch.compile {'on' if config.compile else 'off'}; "
        f"{config.steps} steps, the first {config.warmup_steps} not timed.",
        "",
        "| model | ZeRO | path | tokens/s | MFU | Ray Train overhead | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        value = mfu(row["tokens_per_second"], config, row["model"])
        overhead = row.get("overhead")
        lines.append(
            f"| {row['model']} | {row['stage']} | {row['path']} | {row['tokens_per_second']:,.0f} | "
            f"{f'{value:.1%}' if value is not None else '-'} | "
            f"{f'{overhead:+.1%}' if overhead is not None else ''} | {row['wall_seconds']} |"
        )
    if decoders:
        lines += decoder_markdown(*decoders)
    lines += ["", f"Targets: {TARGETS}.", f"Anchor measured before: {ANCHOR}."]
    if smoke:
        lines += ["", "Smoke mode (tiny model on CPU): checks that every path runs; says nothing of GPU speed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --plain-worker, one plain-deepspeed measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few steps (checks the paths)")
    parser.add_argument("--stages", type=int, nargs="+", help="ZeRO stages (default 1 2 3; smoke: 2)")
    parser.add_argument("--models", nargs="+", choices=ARCHITECTURES, help="architectures (default: gpt2 llama)")
    parser.add_argument("--no-decoders", action="store_true", help="skip the old-decoder/transformers comparison")
    parser.add_argument("--decoders-only", action="store_true", help="only the old-decoder/transformers comparison")
    parser.add_argument("--rounds", type=int, default=2, help="decoder comparison rounds (best of, interleaved)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run")
    parser.add_argument("--micro-batch", type=int, help="sequences per GPU per step")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--results", type=Path, help=f"markdown output (default {DEFAULT_RESULTS}; smoke: none)")
    parser.add_argument("--workdir", type=Path, help="keep datasets and checkpoints here (default: a temp dir)")
    parser.add_argument("--plain-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup-steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = parser.parse_args(argv)
    if args.plain_worker:
        plain_worker(args.plain_worker, args.data, args.result, args.warmup_steps)
        return 0

    config = SMOKE if args.smoke else GPU
    overrides = {
        "steps": args.steps or config.steps,
        "micro_batch": args.micro_batch or config.micro_batch,
        "compile": config.compile and not args.no_compile,
    }
    config = BenchConfig(**{**config.__dict__, **overrides})
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("train_bench: no CUDA GPU here; run with --smoke for the CPU check")
    stages = args.stages or ([2] if args.smoke else [1, 2, 3])
    results_path = args.results if args.results else (None if args.smoke else DEFAULT_RESULTS)

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.decoders_only:
        stages = []
    with tempfile.TemporaryDirectory(prefix="kubeforge-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        data = write_synthetic_dataset(workdir, config)
        if stages:
            ray.init(include_dashboard=False, **({"num_cpus": 4} if args.smoke else {}))
        rows: list[dict[str, Any]] = []
        try:
            for architecture in args.models or ARCHITECTURES:
                for stage in stages:
                    plain = run_plain(config, stage, data, workdir, architecture)
                    through_ray = run_ray(config, stage, data, workdir, architecture)
                    through_ray["overhead"] = 1 - through_ray["tokens_per_second"] / plain["tokens_per_second"]
                    rows += [plain, through_ray]
                    print(json.dumps([plain, through_ray]), flush=True)
        finally:
            if stages:
                ray.shutdown()
    decoders = None
    if not args.no_decoders:
        shape = CPU_DECODERS if args.smoke else config
        # Interleaved rounds, best of each: a shared machine's load drifts over minutes, not within a round.
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for name in ("old-gpt", *ARCHITECTURES):
                row = decoder_step_rate(shape, name, shape.steps, shape.warmup_steps)
                if name not in best or row["tokens_per_second"] > best[name]["tokens_per_second"]:
                    best[name] = row
        decoder_rows = list(best.values())
        print(json.dumps(decoder_rows), flush=True)
        decoders = (shape, decoder_rows)
    report = results_markdown(config, rows, args.smoke, decoders)
    print(report)
    if results_path:
        results_path.write_text(report)
        print(f"wrote {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
