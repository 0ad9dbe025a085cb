"""Running the inference app on a local Ray (``kubeforge run``, tests, benchmarks) and finding its metrics."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import ray
from kubeforge.constants import (
    ENV_SERVE_DIRECT_INGRESS,
    ENV_SERVE_DIRECT_MAX_PORT,
    ENV_SERVE_DIRECT_MIN_DRAINING_PERIOD,
    ENV_SERVE_DIRECT_MIN_PORT,
    direct_ingress_env,
)
from ray import serve

from .app import build_from_settings, read_model_version
from .settings import parse_app_args

LOCAL_HOST = "127.0.0.1"
# Ports above the proxy's that local direct-ingress replicas may take (one per application).
DIRECT_INGRESS_PORTS = 16
DIRECT_PORT_WAIT_S = 30.0


def enable_direct_ingress(http_port: int) -> None:
    """Let the ingress replicas of a Ray started after this call answer HTTP themselves, on ports just above
    http_port (Serve reads these variables when its processes start: call it before ray.init)."""
    env = direct_ingress_env(http_port + 1, http_port + DIRECT_INGRESS_PORTS)
    # No load balancer has to take a local replica out of rotation: it may stop at once (Serve waits 30 s).
    env[ENV_SERVE_DIRECT_MIN_DRAINING_PERIOD] = "0"
    for key, value in env.items():
        os.environ.setdefault(key, value)


def serve_locally(args: dict[str, Any], http_port: int = 8000, route_prefix: str = "/", host: str = LOCAL_HOST) -> str:
    """Deploy build_app(args) on the local Ray (started if needed) and wait until it serves; returns the base URL.

    The Serve application is named after the ModelDeployment; Serve's HTTP proxy listens on host:http_port (the
    first call in a Ray session fixes the port). Stop it with stop_locally(name).
    """
    settings = parse_app_args(args, read_version=read_model_version)
    direct = settings.spec.ingress == "direct"
    if not ray.is_initialized():
        if direct:
            enable_direct_ingress(http_port)
        ray.init(include_dashboard=False)
    elif direct and os.environ.get(ENV_SERVE_DIRECT_INGRESS) != "1":
        raise ValueError(
            f"ModelDeployment {settings.name}: spec.ingress: direct needs a Ray started with direct ingress "
            "enabled (kubeforge_trainer.serve.local.enable_direct_ingress before ray.init)"
        )
    serve.start(http_options={"host": host, "port": http_port})
    serve.run(build_from_settings(settings), name=settings.name, route_prefix=route_prefix)
    port = direct_ingress_port(settings.name, route_prefix, host) if direct else _proxy_port(http_port)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def direct_ingress_port(app: str, route_prefix: str = "/", host: str = LOCAL_HOST) -> int:
    """The port on which the application's direct-ingress replica answers: the one in Serve's direct-ingress range
    whose /-/routes lists exactly this application (a proxy lists every application)."""
    first = int(os.environ.get(ENV_SERVE_DIRECT_MIN_PORT, "30000"))  # (Ray Serve's defaults)
    last = int(os.environ.get(ENV_SERVE_DIRECT_MAX_PORT, "31000"))
    deadline = time.monotonic() + DIRECT_PORT_WAIT_S
    while True:
        for port in range(first, last + 1):
            if _routes(host, port) == {route_prefix: app}:
                return port
        if time.monotonic() > deadline:
            raise RuntimeError(f"no direct-ingress replica of {app} answers on {host}:{first}-{last}")
        time.sleep(0.2)


def _routes(host: str, port: int) -> Any:
    """What a Serve HTTP server on host:port says it routes (None when nothing answers there)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/-/routes", timeout=1) as response:
            return json.loads(response.read())
    except (OSError, ValueError):  # (URLError is an OSError)
        return None


def _proxy_port(requested: int) -> int:
    """The port Serve's proxy really uses (an earlier serve.start in this Ray session may have chosen another)."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # private API: fall back to what was asked for
        return requested


def stop_locally(name: str) -> None:
    """Delete the local application of the ModelDeployment `name` (Ray and Serve keep running)."""
    serve.delete(name)


def local_metrics_url() -> str:
    """URL of the local Ray node's Prometheus endpoint, where every replica's kubeforge_inference_ metrics appear.

    Start Ray with ``ray.init(_metrics_export_port=PORT)`` for a fixed port; otherwise Ray picks one.
    """
    node = next(n for n in ray.nodes() if n.get("Alive"))
    return f"http://{LOCAL_HOST}:{node['MetricsExportPort']}/metrics"
