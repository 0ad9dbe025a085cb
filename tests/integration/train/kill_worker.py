"""Run beside a training run: wait for a marker file, then SIGKILL one Ray Train worker process of the given raylet,
and print what was done as JSON. A process of its own, so the kill lands on time however busy the test process is
(a thread there can be starved for seconds while a run of a few seconds finishes)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil


def training_worker_pids(raylet: int) -> list[int]:
    """PIDs of the Ray Train worker processes started by this raylet."""
    pids = []
    for proc in psutil.Process(raylet).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(pids)


def kill_a_worker_after(marker: Path, raylet: int, timeout: float) -> dict[str, Any]:
    """Wait until marker exists (a checkpoint's _COMPLETE), then SIGKILL one training worker; returns what it did."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            return {"killed": None, "reason": f"{marker} never appeared"}
        time.sleep(0.01)
    pids = training_worker_pids(raylet)
    if not pids:
        return {"killed": None, "reason": "no RayTrainWorker process found"}
    victim = pids[-1]
    os.kill(victim, signal.SIGKILL)
    return {"killed": victim, "workers": pids}


if __name__ == "__main__":
    print(json.dumps(kill_a_worker_after(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))), flush=True)
