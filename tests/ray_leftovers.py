"""Stopping what a shut-down local Ray session left running in the test process (used by tests/conftest.py)."""

from __future__ import annotations

RAY_PROCESS_MARKERS = ("/ray/core/src/ray/", "/site-packages/ray/")
"""Paths in the command line of the processes a local Ray session starts (gcs_server, raylet, dashboard, monitor,
log_monitor, agents)."""


def stop_ray_leftovers(timeout: float = 10.0) -> list[int]:
    """Stop this process's child processes that belong to a local Ray session (after ray.shutdown they should be gone,
    but sessions whose shutdown did not finish left gcs_server, dashboard and monitor running until the test process
    exited); returns their pids. Only direct children: another process's Ray (a `kubeforge run` subprocess) is its
    own."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=False):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if any(marker in command for marker in RAY_PROCESS_MARKERS):
            found.append(child)
    for process in found:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in found]
