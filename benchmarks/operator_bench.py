"""Operator benchmark: create -> child-created latency, child-status -> parent-status latency, and operator memory,
with N TrainingJobs on the Kubernetes API emulator. A script, not a test:

    .venv/bin/python benchmarks/operator_bench.py            # 500 TrainingJobs, writes benchmarks/results/operator.md

The operator runs as `kubeforge operator` in its own process (production settings, resync every 10 s), exactly as in
a pod, against the emulator over HTTP on 127.0.0.1; its resident memory is that process's alone. The emulator runs in
this process and records when each RayJob was created (monotonic clock, same process as the creation times).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from kubeforge.testing import EmulatorServer
from kubeforge.testing.cluster import NAMESPACE, Cluster
from kubeforge.testing.manifests import quickstart_manifest
from kubeforge.testing.runner import OperatorProcess, write_kubeconfig

RESULTS = Path(__file__).resolve().parent / "results" / "operator.md"
TARGET_P99_SECONDS = 1.0
TARGET_RSS_MB = 300.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class PhaseWatcher(threading.Thread):
    """Watches TrainingJobs over HTTP and records when each first reached each phase (monotonic)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/apis/kubeforge.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs?watch=true"
        self.reached: dict[tuple[str, str], float] = {}

    def run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=3600) as stream:
            for line in stream:
                if not line.strip():
                    continue
                obj = json.loads(line).get("object", {})
                phase = (obj.get("status") or {}).get("phase")
                if phase:
                    self.reached.setdefault((obj["metadata"]["name"], phase), time.monotonic())


class MemorySampler(threading.Thread):
    """Samples a process's resident memory every interval seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append(self.process.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(self.interval)


def job_manifest(index: int) -> dict[str, Any]:
    """The quickstart TrainingJob, numbered, reading the benchmark's DataPipeline."""
    manifest = quickstart_manifest("TrainingJob")
    manifest["metadata"]["name"] = f"bench-{index:04d}"
    manifest["spec"]["dataRef"] = {"name": "bench-data"}
    return manifest


def wait_until(what: str, probe: Any, timeout: float) -> None:
    """Poll probe() until true."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def run(jobs: int, rate: float | None, workdir: Path) -> dict[str, Any]:
    """Run the benchmark; returns the measurements."""
    with EmulatorServer(keep_request_log=False) as server:
        cluster = Cluster(server)
        operator = OperatorProcess(write_kubeconfig(workdir / "kubeconfig", server.url), log_path=workdir / "log")
        operator.start()
        assert operator.process is not None
        sampler = MemorySampler(operator.process.pid)
        sampler.start()
        watcher = PhaseWatcher(server.url)
        watcher.start()
        try:
            idle_rss = psutil.Process(operator.process.pid).memory_info().rss / 2**20
            pipeline = quickstart_manifest("DataPipeline")
            pipeline["metadata"]["name"] = "bench-data"
            cluster.apply(pipeline)
            cluster.wait_for("the DataPipeline's RayJob", lambda: cluster.get("RayJob", "bench-data-data"), 60)
            cluster.kuberay("RayJob", "bench-data-data", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
            cluster.wait_status("DataPipeline", "bench-data", phase="Succeeded")

            # Create: latency from just before the POST to the RayJob's creation in the emulator.
            created: dict[str, float] = {}
            started = time.monotonic()
            for index in range(jobs):
                if rate:
                    time.sleep(max(0.0, started + index / rate - time.monotonic()))
                manifest = job_manifest(index)
                created[manifest["metadata"]["name"]] = time.monotonic()
                cluster.apply(manifest)
            create_seconds = time.monotonic() - started
            children = server.call(lambda emulator: dict(emulator.created_at))

            def all_children() -> bool:
                nonlocal children
                children = server.call(lambda emulator: dict(emulator.created_at))
                return all(("rayjobs", NAMESPACE, f"{name}-train") in children for name in created)

            wait_until("every RayJob", all_children, 600)
            child_latency = [children[("rayjobs", NAMESPACE, f"{name}-train")] - t for name, t in created.items()]
            all_children_seconds = max(children[("rayjobs", NAMESPACE, f"{n}-train")] for n in created) - started

            # KubeRay reports Running: latency from the child's status patch to the parent's phase Running.
            patched: dict[str, float] = {}
            for name in created:
                patched[name] = time.monotonic()
                cluster.kuberay("RayJob", f"{name}-train", jobDeploymentStatus="Running", jobStatus="RUNNING")
            wait_until(
                "every TrainingJob Running", lambda: all((n, "Running") in watcher.reached for n in created), 300
            )
            status_latency = [watcher.reached[(name, "Running")] - t for name, t in patched.items()]

            # Settle: a full resync period with 500 running jobs, then measure memory.
            time.sleep(12)
            settled_rss = psutil.Process(operator.process.pid).memory_info().rss / 2**20
            metrics = operator.get("metrics", "/metrics")
            times = psutil.Process(operator.process.pid).cpu_times()
            operator_cpu = times.user + times.system
            own = psutil.Process().cpu_times()
            harness_cpu = own.user + own.system
        finally:
            sampler.stopped.set()
            code = operator.stop()
    return {
        "jobs": jobs,
        "rate": rate,
        "create_seconds": create_seconds,
        "all_children_seconds": all_children_seconds,
        "child_latency": child_latency,
        "status_latency": status_latency,
        "idle_rss": idle_rss,
        "peak_rss": max(sampler.samples),
        "settled_rss": settled_rss,
        "exit_code": code,
        "load": os.getloadavg()[0],
        "operator_cpu": operator_cpu,
        "harness_cpu": harness_cpu,
        "reconciles": sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('kubeforge_reconcile_total{kind="TrainingJob"')
        ),
    }


def report(results: list[dict[str, Any]]) -> str:
    """The results as markdown."""
    cpu = psutil.cpu_count(logical=True)
    lines = [
        "# Operator benchmark",
        "",
        f"`benchmarks/operator_bench.py`, run {datetime.date.today().isoformat()} on {platform.machine()}, "
        f"{cpu} CPUs, Python {platform.python_version()}, kopf {version('kopf')}, kmock {version('kmock')}.",
        "",
        "The operator runs as `kubeforge operator` in its own process with production settings (resync every 10 s)",
        "against the kmock-based API emulator (`kubeforge.testing`) over HTTP on 127.0.0.1, which runs in the",
        "benchmark's process on the same CPUs. Each TrainingJob references one Succeeded DataPipeline, so every start",
        "reads it. The benchmark process runs with its garbage collector off (the emulator's full collections",
        "stalled it for seconds); the operator runs as in production. *Child latency*: from just before the",
        "TrainingJob's POST to the creation of its RayJob.",
        "*Status latency*: from KubeRay's status patch of a RayJob (Running) to the TrainingJob's phase Running, as",
        "seen by a watch; the status patches of all jobs are sent back to back once every child exists, whatever",
        "the creation rate. RSS: resident memory of the operator process (psutil). Operator CPU per job: user + system",
        "CPU time of the operator process over the whole run (create, one status change, a resync period) divided",
        "by the jobs; it does not depend on the machine's load. Load avg: the machine's 1-minute load average at the",
        "end of the run (other work shares this machine; on 2 CPUs anything above 2 means waiting for a CPU).",
        "",
        "| TrainingJobs | created at | all children after | child p50 | child p99 | child max | status p50 "
        "| status p99 | RSS idle | RSS peak | RSS settled | operator CPU per job | load avg "
        "| targets (p99 < 1 s, RSS < 300 MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        child, status = r["child_latency"], r["status_latency"]
        rate = f"{r['rate']:.0f}/s" if r["rate"] else f"burst ({r['jobs'] / r['create_seconds']:.0f}/s)"
        met = percentile(child, 99) < TARGET_P99_SECONDS and r["peak_rss"] < TARGET_RSS_MB
        lines.append(
            f"| {r['jobs']} | {rate} | {r['all_children_seconds']:.1f} s | {statistics.median(child) * 1000:.0f} ms "
            f"| {percentile(child, 99) * 1000:.0f} ms "
            f"| {max(child) * 1000:.0f} ms | {statistics.median(status) * 1000:.0f} ms "
            f"| {percentile(status, 99) * 1000:.0f} ms | {r['idle_rss']:.0f} MB | {r['peak_rss']:.0f} MB "
            f"| {r['settled_rss']:.0f} MB | {r['operator_cpu'] / r['jobs'] * 1000:.0f} ms | {r['load']:.1f} "
            f"| {'met' if met else 'NOT met'} |"
        )
    lines += [
        "",
        "Exit codes after SIGTERM: " + ", ".join(str(r["exit_code"]) for r in results) + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="TrainingJobs to create (default 500)")
    parser.add_argument(
        "--rates", default="burst,10,2", help="comma-separated creation rates per second; 'burst' = as fast as possible"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"markdown file to write (default {RESULTS})")
    args = parser.parse_args(argv)
    results = []
    for rate in args.rates.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            result = run(args.jobs, None if rate == "burst" else float(rate), Path(workdir))
        results.append(result)
        print(next(line for line in report([result]).splitlines() if line.startswith(f"| {args.jobs} ")), flush=True)
    text = report(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KUBEFORGE_LOG_LEVEL", "WARNING")
    # The emulator is the harness, not the system under test: its full garbage collections over thousands of
    # stored object versions stalled it (and so everything) for up to 1.8 s per collection during a burst.
    gc.disable()
    sys.exit(main())
