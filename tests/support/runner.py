"""Run the emulator and the operator in background threads, each with its own event loop.

The operator runs exactly as in production (kopf, real HTTP), pointed at the emulator's URL; kopf's shutdown
must not share a loop with the caller's (it would cancel the caller's tasks), hence the threads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import yaml
from kubeforge.config import OperatorConfig

from .emulator import KubeforgeEmulator

START_TIMEOUT = 30.0


class EmulatorServer:
    """The emulator served over HTTP on 127.0.0.1 (a random port) from a background thread."""

    def __init__(self, keep_request_log: bool = True, managed_fields: bool = False) -> None:
        self.keep_request_log = keep_request_log
        self.managed_fields = managed_fields
        self.emulator: KubeforgeEmulator | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def start(self) -> EmulatorServer:
        """Start serving; returns when the URL is known."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)

    def call(self, fn: Callable[[KubeforgeEmulator], Any]) -> Any:
        """Run fn(emulator) on the emulator's loop (its state is not thread-safe) and return the result."""

        async def invoke() -> Any:
            return fn(self.emulator)

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(START_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        handler = KubeforgeEmulator(keep_request_log=self.keep_request_log, managed_fields=self.managed_fields)
        async with handler as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def emulator_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings for the emulator: no peering, fast retries."""
    settings.peering.standalone = True
    settings.networking.error_backoffs = (0.1, 0.2, 0.5, 1.0)
    settings.queueing.idle_timeout = 1.0
    settings.watching.reconnect_backoff = 0.1


class OperatorRunner:
    """The kubeforge operator (kopf) against a given API server, in a background thread."""

    def __init__(
        self,
        server: str,
        config: OperatorConfig,
        adjust_settings: Callable[[kopf.OperatorSettings], None] = emulator_settings,
    ) -> None:
        from kubeforge.controller import register

        self.registry = kopf.OperatorRegistry()
        register(self.registry, config, server=server, adjust_settings=adjust_settings)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kubeforge-operator", daemon=True)

    def start(self) -> OperatorRunner:
        """Start the operator; returns once its startup handlers ran."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the operator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop the operator and join its thread."""
        self._stop.set()
        self._thread.join(START_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop in time")

    @property
    def alive(self) -> bool:
        """Whether the operator thread still runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    clusterwide=True,
                    standalone=True,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> OperatorRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig pointing at server (token auth with a dummy token), as a cluster admin would hand out."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "operator", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    """`kubeforge operator` as a separate process (its own memory, signals, kubeconfig), the way it runs in a pod."""

    def __init__(
        self,
        kubeconfig: Path,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBEFORGE_METRICS_PORT": str(self.metrics_port),
            "KUBEFORGE_HEALTH_PORT": str(self.health_port),
            **(env or {}),
        }
        self.log_path = log_path
        self.args = list(args or [])  # extra `kubeforge operator` arguments (--namespace ...)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        """Start the process; returns when its liveness endpoint answers."""
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubeforge.cli", "operator", *self.args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT * 2
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}")
            try:
                self.get("health", "/healthz")
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the operator's liveness endpoint never answered")

    def get(self, endpoint: str, path: str) -> str:
        """GET a path from the metrics or the health endpoint."""
        port = self.metrics_port if endpoint == "metrics" else self.health_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read().decode()

    def stop(self, timeout: float = START_TIMEOUT) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after the timeout)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _default_sigint() -> None:
    """Let the child take Ctrl-C even when the caller runs as a background job (which ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_process(args: list[str], cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    """`kubeforge ARGS` in cwd as a user runs it: stdout and stderr merged, unbuffered text, Ctrl-C delivered."""
    return subprocess.Popen(
        [sys.executable, "-m", "kubeforge.cli", *args],
        preexec_fn=_default_sigint,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
