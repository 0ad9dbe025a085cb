"""Which model version answers a request (canary split, explicit pinning) and which route a path is."""

from __future__ import annotations

from collections.abc import Sequence

from .protocol import ApiError
from .settings import ModelVersion

ROUTES: dict[str, frozenset[str]] = {
    "/v1/completions": frozenset({"POST"}),
    "/v1/chat/completions": frozenset({"POST"}),
    "/v1/classify": frozenset({"POST"}),
    "/v1/models": frozenset({"GET"}),
    "/health": frozenset({"GET"}),
    "/ready": frozenset({"GET"}),
}
UNMATCHED_ROUTE = "unmatched"  # one metrics label for every unknown path, so scanners cannot explode cardinality
NO_VERSION = "none"  # version label of requests answered before a version was chosen


def route_label(path: str) -> str:
    """The route a request path belongs to (its metrics label), or UNMATCHED_ROUTE."""
    normalized = path.rstrip("/") or "/"
    return normalized if normalized in ROUTES else UNMATCHED_ROUTE


def choose_version(versions: Sequence[ModelVersion], draw: float) -> ModelVersion:
    """The version whose traffic share contains draw (uniform in [0, 1)): stable takes [0, p), canary the rest."""
    edge = 0.0
    for version in versions:
        edge += version.traffic_percent / 100.0
        if draw < edge:
            return version
    # Shares sum to 100; this only catches draw rounding at the top edge.
    return next((v for v in reversed(versions) if v.traffic_percent > 0), versions[-1])


def pinned_version(
    requested: str | None, name: str, versions: Sequence[ModelVersion], adapters: Sequence[str] = ()
) -> ModelVersion | ApiError | None:
    """The version a request's "model" field pins, None to follow the traffic split, or a 404 when unknown.

    "model" may be the deployment name (traffic split), "<name>:<version>" or a bare version id (that version).
    """
    if requested is None or requested == name:
        return None
    for version in versions:
        if requested in (f"{name}:{version.version}", version.version):
            return version
    known = ", ".join([name] + [f"{name}:{v.version}" for v in versions] + list(adapters))
    return ApiError(404, f"model {requested!r} is not served here; use one of: {known}", code="model_not_found")
