"""Running the inference app on a local Ray (``kubeforge run``, tests, benchmarks) and finding its metrics."""

from __future__ import annotations

from typing import Any

import ray
from ray import serve

from .app import build_from_settings, read_model_version
from .settings import parse_app_args

LOCAL_HOST = "127.0.0.1"


def serve_locally(args: dict[str, Any], http_port: int = 8000, route_prefix: str = "/", host: str = LOCAL_HOST) -> str:
    """Deploy build_app(args) on the local Ray (started if needed) and wait until it serves; returns the base URL.

    The Serve application is named after the ModelDeployment; Serve's HTTP proxy listens on host:http_port (the
    first call in a Ray session fixes the port). Stop it with stop_locally(name).
    """
    settings = parse_app_args(args, read_version=read_model_version)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": http_port})
    serve.run(build_from_settings(settings), name=settings.name, route_prefix=route_prefix)
    return f"http://{host}:{_proxy_port(http_port)}{route_prefix.rstrip('/')}"


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
