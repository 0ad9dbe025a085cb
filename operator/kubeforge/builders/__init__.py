"""Pure builders of the child objects (RayJob, RayService, monitors): no API calls, no kopf."""

from .common import child_labels, child_name, spec_hash
from .monitoring import build_monitor
from .rayjob import build_rayjob
from .rayservice import ResolvedModel, build_rayservice, serve_url
from .validation import parse_resource

__all__ = [
    "ResolvedModel",
    "build_monitor",
    "build_rayjob",
    "build_rayservice",
    "child_labels",
    "child_name",
    "parse_resource",
    "serve_url",
    "spec_hash",
]
