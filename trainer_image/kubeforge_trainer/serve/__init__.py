"""The inference app of a ModelDeployment: an OpenAI-style HTTP API on Ray Serve (see docs/serving.md).

``build_app(args)`` is the RayService's serveConfigV2 import path (``kubeforge_trainer.serve:build_app``);
``serve_locally(args)`` runs the same app on a local Ray and ``local_metrics_url()`` says where its metrics are.
Ray is imported only when one of these is used, so the pure modules (protocol, sampling, text, engine, settings,
routing) stay cheap to import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "local_metrics_url", "serve_locally", "stop_locally"]

_LAZY = {
    "build_app": "app",
    "serve_locally": "local",
    "stop_locally": "local",
    "local_metrics_url": "local",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
