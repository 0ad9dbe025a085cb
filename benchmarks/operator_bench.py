"""Operator benchmark on an emulated API server that costs what a real one does: Events posted, status as a
subresource, full RayJob bodies with managedFields-sized metadata. A script, not a test:

    .venv/bin/python benchmarks/operator_bench.py   # every scenario, writes benchmarks/results/operator.md
    .venv/bin/python benchmarks/operator_bench.py --scenarios idle --total 10000 --active 1000

Scenarios (issue #25):
* sustained: TrainingJobs created at 5, 20 and 50 per second, each taken through its life cycle by a simulated
  KubeRay two seconds later (RayJob Running), and two more seconds later (Succeeded), at the same rate;
* burst: 1,000 TrainingJobs created as fast as one client can, then the same transitions, all at once;
* idle: 10,000 TrainingJobs present (9,000 finished, 1,000 running, each with its RayJob), the operator started on
  them: its start-up, then its CPU and memory while nothing happens, with the resync at 20x its default frequency.

The operator runs as `kubeforge operator` in its own process with production settings, against the kmock-based
emulator (`tests/support/`, test scaffolding outside the shipped package) over HTTP on 127.0.0.1. The emulator, the
client and a watch run in this process on the same two CPUs. Operator CPU is that process's user + system time
(psutil), RSS its resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import psutil
from kubeforge.builders import build_rayjob, parse_resource
from kubeforge.status import Observation, derive_status, rayjob_state

# The emulator and runners are test scaffolding in tests/support/ (not shipped in the package): import them from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import EmulatorServer
from support.cluster import NAMESPACE, TEST_CONFIG, Cluster
from support.manifests import quickstart_manifest
from support.runner import OperatorProcess, write_kubeconfig

RESULTS = Path(__file__).resolve().parent / "results" / "operator.md"
TARGET_P99_SECONDS = 1.0  # create -> RayJob at 20/s sustained
TARGET_CPU_MS = 10.0  # operator CPU per resource (its whole life cycle)
TARGET_IDLE_PERCENT = 2.0  # of one core, per 1,000 active resources
TARGET_RSS_MB = 300.0  # with 10,000 resources
OPERATOR_CLIENTS = ("kubeforge-operator", "kopf")
LAG_SECONDS = 2.0  # from a job's creation to KubeRay reporting it Running, and from Running to Succeeded


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def load() -> str:
    """The machine's load averages (1, 5, 15 min), as `uptime` shows them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class PhaseWatcher(threading.Thread):
    """Watches TrainingJobs over HTTP and records when each first reached each phase (monotonic)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/apis/kubeforge.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs?watch=true"
        self.reached: dict[tuple[str, str], float] = {}

    def run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=3600) as stream:
            for line in stream:
                if line.strip():
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
    """The quickstart TrainingJob, numbered, reading its data from a URI."""
    manifest = quickstart_manifest("TrainingJob")
    manifest["metadata"]["name"] = f"bench-{index:05d}"
    manifest["spec"]["dataRef"] = {"uri": "s3://bench/corpus"}
    return manifest


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.02) -> None:
    """Poll probe() until true."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


class Harness:
    """The emulator, the operator process and the probes of one scenario."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.server = EmulatorServer(keep_request_log=False, managed_fields=True).start()
        self.cluster = Cluster(self.server)
        self.operator = OperatorProcess(
            write_kubeconfig(workdir / "kubeconfig", self.server.url), env=env, log_path=workdir / "log"
        )
        self.sampler: MemorySampler | None = None
        self.watcher = PhaseWatcher(self.server.url)

    def start_operator(self) -> None:
        self.operator.start()
        assert self.operator.process is not None
        self.process = psutil.Process(self.operator.process.pid)
        self.sampler = MemorySampler(self.operator.process.pid)
        self.sampler.start()

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def rss(self) -> float:
        return self.process.memory_info().rss / 2**20

    def requests(self) -> dict[str, int]:
        """The operator's API requests so far: {"GET": n, "POST": n, ...} (both its clients: ours and kopf's)."""
        counts = self.server.call(lambda emulator: dict(emulator.request_counts))
        out: dict[str, int] = {}
        for (client, method), count in counts.items():
            if client in OPERATOR_CLIENTS:
                out[method] = out.get(method, 0) + count
        return out

    def metric(self, prefix: str) -> float:
        """Sum of the operator's /metrics samples whose line starts with prefix (0 while it is too busy to answer)."""
        try:
            text = self.operator.get("metrics", "/metrics")
        except OSError:  # a busy start-up starves the metrics thread (one GIL): ask again later
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def close(self) -> int:
        if self.sampler is not None:
            self.sampler.stopped.set()
        code = self.operator.stop()
        self.server.stop()
        return code


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {method: after.get(method, 0) - before.get(method, 0) for method in after}


def lifecycle(jobs: int, rate: float | None, workdir: Path) -> dict[str, Any]:
    """Create jobs at rate (None: as fast as possible) and take each through Running and Succeeded."""
    harness = Harness(workdir, env={"KUBEFORGE_LOG_LEVEL": "WARNING"})
    harness.start_operator()
    harness.watcher.start()
    cluster, server = harness.cluster, harness.server
    try:
        load_before = load()
        idle_rss = harness.rss()
        cpu_before, requests_before = harness.cpu(), harness.requests()
        created: dict[str, float] = {}
        running: dict[str, float] = {}
        succeeded: dict[str, float] = {}
        names = [job_manifest(i)["metadata"]["name"] for i in range(jobs)]

        def children() -> dict[Any, float]:
            return server.call(lambda emulator: dict(emulator.created_at))

        def report(name: str, when: dict[str, float], **status: Any) -> None:
            key = ("rayjobs", NAMESPACE, f"{name}-train")
            if key not in known:
                wait_until(f"RayJob of {name}", lambda: key in known or known.update(children()), 60)
            when[name] = time.monotonic()
            cluster.kuberay("RayJob", f"{name}-train", **status)

        known: dict[Any, float] = {}
        started = time.monotonic()
        if rate:
            lag = round(LAG_SECONDS * rate)
            for tick in range(jobs + 2 * lag):
                time.sleep(max(0.0, started + tick / rate - time.monotonic()))
                if tick < jobs:
                    created[names[tick]] = time.monotonic()
                    cluster.apply(job_manifest(tick))
                if 0 <= tick - lag < jobs:
                    report(names[tick - lag], running, jobDeploymentStatus="Running", jobStatus="RUNNING")
                if 0 <= tick - 2 * lag < jobs:
                    report(names[tick - 2 * lag], succeeded, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        else:
            for index, name in enumerate(names):
                created[name] = time.monotonic()
                cluster.apply(job_manifest(index))
            create_rate = jobs / (time.monotonic() - started)
            for name in names:
                report(name, running, jobDeploymentStatus="Running", jobStatus="RUNNING")
            for name in names:
                report(name, succeeded, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        wait_until(
            "every TrainingJob Succeeded", lambda: all((n, "Succeeded") in harness.watcher.reached for n in names), 600
        )
        time.sleep(2.0)  # writes still on their way (Events)
        cpu = harness.cpu() - cpu_before
        threads = {t.id: t.user_time + t.system_time for t in harness.process.threads()}
        loop_cpu = threads.pop(harness.process.pid, 0.0)
        requests = diff(harness.requests(), requests_before)
        known = children()
        child = [known[("rayjobs", NAMESPACE, f"{n}-train")] - created[n] for n in names]
        follow = [harness.watcher.reached[(n, "Running")] - running[n] for n in names]
        follow += [harness.watcher.reached[(n, "Succeeded")] - succeeded[n] for n in names]
        peak = max(harness.sampler.samples) if harness.sampler else harness.rss()
        return {
            "scenario": f"sustained {rate:g}/s" if rate else f"burst ({create_rate:.0f}/s)",
            "jobs": jobs,
            "child_p50": statistics.median(child),
            "child_p99": percentile(child, 99),
            "follow_p50": statistics.median(follow),
            "follow_p99": percentile(follow, 99),
            "cpu_ms": cpu / jobs * 1000,
            # Where it went, over the process's life: kopf's event loop (the main thread) and the API client's
            # threads (the official client's request building and response parsing).
            "loop_share": loop_cpu / max(1e-9, loop_cpu + sum(threads.values())),
            "requests": requests,
            "requests_per": sum(requests.values()) / jobs,
            "writes_per": sum(v for m, v in requests.items() if m != "GET") / jobs,
            "rss_idle": idle_rss,
            "rss_peak": peak,
            "load": f"{load_before} -> {load()}",
            "exit": harness.close(),
        }
    except BaseException:
        harness.close()
        raise


async def seed(url: str, total: int, active: int, concurrency: int = 16) -> None:
    """Create total TrainingJobs with their RayJobs (built by the operator's own builder), the first `active`
    Running and the rest Succeeded, before any operator runs."""
    base = f"{url}/apis/kubeforge.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs"
    rayjobs = f"{url}/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        manifest = job_manifest(index)
        name = manifest["metadata"]["name"]
        async with session.post(base, json=manifest) as response:
            body = await response.json()
        resource, problem = parse_resource(body)
        assert resource is not None, problem
        rayjob = build_rayjob(resource, TEST_CONFIG, raw_spec=body["spec"], data_uri="s3://bench/corpus")
        kopf.adopt(rayjob, owner=body)
        async with session.post(rayjobs, json=rayjob) as response:
            await response.read()
        done = index >= active
        kuberay = {"jobDeploymentStatus": "Complete" if done else "Running"}
        kuberay["jobStatus"] = "SUCCEEDED" if done else "RUNNING"
        merge = {"Content-Type": "application/merge-patch+json"}
        async with session.patch(f"{rayjobs}/{name}-train/status", json={"status": kuberay}, headers=merge) as r:
            await r.read()
        # The status the operator itself would have written (so a restart has nothing to correct).
        observed = {**rayjob, "status": kuberay}
        status = derive_status(
            "TrainingJob", {}, 1, Observation(child_name=f"{name}-train", child=rayjob_state(observed))
        )
        async with session.patch(f"{base}/{name}/status", json={"status": status}, headers=merge) as r:
            await r.read()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            await one(session, queue.get_nowait())

    async with aiohttp.ClientSession(headers={"User-Agent": "bench-seed/1"}) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def idle(total: int, active: int, window: float, resync: float, workdir: Path) -> dict[str, Any]:
    """total TrainingJobs present, active of them running: the operator's start-up, then its idle cost."""
    env = {"KUBEFORGE_LOG_LEVEL": "WARNING", "KUBEFORGE_REQUEUE_SECONDS": str(resync)}
    harness = Harness(workdir, env=env)
    try:
        seeded = time.monotonic()
        asyncio.run(seed(harness.server.url, total, active))
        seed_seconds = time.monotonic() - seeded
        load_before = load()
        started = time.monotonic()
        harness.start_operator()
        wait_until(
            "every TrainingJob known to the operator",
            lambda: harness.metric('kubeforge_resources{kind="TrainingJob"') >= total,
            900,
            interval=2.0,  # each scrape costs the operator a pass over its 10,000 phases: not 50 a second
        )
        # Start-up is over when the active jobs' child events have been handled too: no request for 3 s.
        last, quiet_since = harness.requests(), time.monotonic()
        while time.monotonic() - quiet_since < 3.0:
            time.sleep(0.5)
            now = harness.requests()
            if now != last:
                last, quiet_since = now, time.monotonic()
        startup_seconds = quiet_since - started
        startup_cpu = harness.cpu()
        startup_requests = harness.requests()
        gc_before = harness.rss()
        cpu_before, requests_before = harness.cpu(), harness.requests()
        time.sleep(window)
        cpu = harness.cpu() - cpu_before
        requests = diff(harness.requests(), requests_before)
        return {
            "scenario": f"idle: {total} present, {active} active",
            "total": total,
            "active": active,
            "seed_seconds": seed_seconds,
            "startup_seconds": startup_seconds,
            "startup_cpu": startup_cpu,
            "startup_requests": startup_requests,
            "window": window,
            "resync": resync,
            "idle_percent": cpu / window * 100,
            "idle_percent_per_1000": cpu / window * 100 / (active / 1000),
            "idle_requests": requests,
            "rss_after_startup": gc_before,
            "rss_end": harness.rss(),
            "rss_peak": max(harness.sampler.samples) if harness.sampler else harness.rss(),
            "load": f"{load_before} -> {load()}",
            "exit": harness.close(),
        }
    except BaseException:
        harness.close()
        raise


def lifecycle_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | jobs | create → RayJob p50 | p99 | status follow p50 | p99 | operator CPU per job "
        "| API requests per job (writes) | RSS idle → peak | load before → after | p99 < 1 s | CPU ≤ 10 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['jobs']} | {r['child_p50'] * 1000:.0f} ms | {r['child_p99'] * 1000:.0f} ms "
            f"| {r['follow_p50'] * 1000:.0f} ms | {r['follow_p99'] * 1000:.0f} ms "
            f"| {r['cpu_ms']:.1f} ms ({r['loop_share']:.0%} loop) "
            f"| {r['requests_per']:.1f} ({r['writes_per']:.1f}) | {r['rss_idle']:.0f} → {r['rss_peak']:.0f} MB "
            f"| {r['load']} | {'met' if r['child_p99'] < TARGET_P99_SECONDS else 'NOT met'} "
            f"| {'met' if r['cpu_ms'] <= TARGET_CPU_MS else 'NOT met'} |"
        )
    lines += ["", "Requests by method: " + "; ".join(f"{r['scenario']}: {r['requests']}" for r in results), ""]
    return lines


def idle_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | start-up (CPU) | start-up requests | idle CPU over window | per 1,000 active | idle requests "
        "| RSS after start-up → end (peak) | load before → after | idle < 2 % | RSS < 300 MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} (resync {r['resync']:g} s, window {r['window']:g} s) "
            f"| {r['startup_seconds']:.1f} s ({r['startup_cpu']:.1f} CPU s) | {r['startup_requests']} "
            f"| {r['idle_percent']:.2f} % of a core | {r['idle_percent_per_1000']:.2f} % | {r['idle_requests']} "
            f"| {r['rss_after_startup']:.0f} → {r['rss_end']:.0f} MB ({r['rss_peak']:.0f}) | {r['load']} "
            f"| {'met' if r['idle_percent_per_1000'] < TARGET_IDLE_PERCENT else 'NOT met'} "
            f"| {'met' if r['rss_peak'] < TARGET_RSS_MB else 'NOT met'} |"
        )
    return [*lines, ""]


def report(lifecycles: list[dict[str, Any]], idles: list[dict[str, Any]]) -> str:
    """The results as markdown."""
    cpu = psutil.cpu_count(logical=True)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Operator benchmark",
        "",
        f"`benchmarks/operator_bench.py`, run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at "
        f"commit {commit} on {platform.machine()} ({model}), {cpu} CPUs shared with other work (load averages in "
        f"each row), Python {platform.python_version()}, kopf {version('kopf')}, kmock {version('kmock')}.",
        "",
        "The operator runs as `kubeforge operator` (production settings) against the kmock-based emulator over HTTP",
        "on 127.0.0.1; the emulator, the client and a watch share the machine's two CPUs with it. The emulator",
        "stores Events, isolates the status subresource, and adds a managedFields entry per writer to every object",
        "(the skeleton of every field written), so the operator reads and parses bodies of a real API server's size;",
        "the RayJobs are the operator's own full bodies (pod templates included). *create → RayJob*: from just",
        "before the TrainingJob's POST to its RayJob's creation. *status follow*: from the simulated KubeRay's",
        "status patch of a RayJob (Running, then Succeeded) to the TrainingJob's phase, seen by a watch. *operator",
        "CPU per job*: the operator process's CPU time over the whole life cycles, divided by the jobs. *API",
        "requests*: every request the operator's two clients (ours and kopf's) sent, watches included.",
        "",
        "## Life cycles (create → Running → Succeeded)",
        "",
        *lifecycle_table(lifecycles),
        "## Many resources present",
        "",
        *idle_table(idles),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="sustained,burst,idle", help="comma-separated: sustained, burst, idle")
    parser.add_argument("--rates", default="5,20,50", help="sustained creation rates per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of sustained creation per rate")
    parser.add_argument("--burst", type=int, default=1000, help="TrainingJobs in the burst")
    parser.add_argument("--total", type=int, default=10000, help="TrainingJobs present in the idle scenario")
    parser.add_argument("--active", type=int, default=1000, help="of which running")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of idle measurement")
    parser.add_argument("--resync", type=float, default=30.0, help="resync seconds in the idle scenario")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"markdown file to write (default {RESULTS})")
    args = parser.parse_args(argv)
    scenarios = set(args.scenarios.split(","))
    lifecycles: list[dict[str, Any]] = []
    idles: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sustained" in scenarios:
            for rate in (float(r) for r in args.rates.split(",")):
                lifecycles.append(lifecycle(round(rate * args.seconds), rate, Path(tmp)))
                print(lifecycle_table(lifecycles[-1:])[2], flush=True)
        if "burst" in scenarios:
            lifecycles.append(lifecycle(args.burst, None, Path(tmp)))
            print(lifecycle_table(lifecycles[-1:])[2], flush=True)
        if "idle" in scenarios:
            idles.append(idle(args.total, args.active, args.window, args.resync, Path(tmp)))
            print(idle_table(idles[-1:])[2], flush=True)
    text = report(lifecycles, idles)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    # The emulator is the harness, not the system under test: its full garbage collections over thousands of
    # stored object versions stalled it (and so everything) for up to 1.8 s per collection during a burst.
    gc.disable()
    sys.exit(main())
