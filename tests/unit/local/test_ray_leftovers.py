"""The suite stops what a shut-down local Ray left running in the test process (tests/ray_leftovers.py, called after
each module by tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
from ray_leftovers import RAY_PROCESS_MARKERS, stop_ray_leftovers


def test_children_of_a_ray_session_are_stopped_and_others_kept(tmp_path) -> None:
    # Stand-ins with a Ray session process's command line (a real one needs a whole Ray); one ignores SIGTERM, like a
    # process busy in native code, and is killed after the wait.
    marker = f"{tmp_path}{RAY_PROCESS_MARKERS[1]}gcs_server"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    ray_like = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker]),
        subprocess.Popen([sys.executable, "-c", stubborn, marker]),
    ]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        time.sleep(0.5)  # let the stubborn one install its handler
        stopped = stop_ray_leftovers(timeout=2)
        assert sorted(stopped) == sorted(p.pid for p in ray_like)
        assert all(p.poll() is not None for p in ray_like)
        assert other.poll() is None and psutil.pid_exists(other.pid)
    finally:
        for process in (*ray_like, other):
            process.kill()
            process.wait()
