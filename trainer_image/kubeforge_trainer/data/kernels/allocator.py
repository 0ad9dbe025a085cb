"""glibc malloc settings for the data step's worker processes: freed memory is kept for the next block.

Every block stage allocates arrays of tens of MB (a byte per byte of text, 8 bytes per word) and frees them when the
block is done. With glibc's defaults an allocation over its mmap threshold (128 KiB, rising with use to at most
32 MiB) gets fresh pages from the kernel, and freeing it hands them back: in the benchmark the page faults were about a
fifth of the workers' CPU time. With the threshold at its maximum and up to TRIM_BYTES of free memory kept, block
after block reuses the same pages. The free memory kept is capped at TRIM_FRACTION of the worker's share of the
memory (the container's cgroup limit, else the machine's, divided among its CPUs, one worker each): the local runner
shares its Ray workers between steps, so a worker that cleaned text may train next, and the heap it keeps is memory
the next step cannot have.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MMAP_THRESHOLD_BYTES = 32 << 20
"""Allocations up to this size come from the heap, whose freed memory is reused (glibc's largest allowed value)."""
TRIM_BYTES = 1 << 30
"""At most this much free memory at the top of the heap is kept for reuse, not returned to the kernel."""
TRIM_FRACTION = 0.125
"""...and at most this fraction of the worker's share of the memory."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: list[bool] = []


def keep_freed_memory() -> bool:
    """Apply the settings to this process (once); False where the C library is not glibc, which is left as it is."""
    if not _applied:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _applied.append(False)
        else:
            settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, trim_bytes(worker_memory())))
            _applied.append(all(mallopt(option, value) == 1 for option, value in settings))
    return _applied[0]


def trim_bytes(worker_memory_bytes: int) -> int:
    """The free heap memory a worker keeps: TRIM_BYTES, capped at TRIM_FRACTION of its memory."""
    return int(min(TRIM_BYTES, TRIM_FRACTION * worker_memory_bytes))


def worker_memory() -> int:
    """This worker's share of the memory: the cgroup's limit where one is set, else the machine's, per CPU."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
        break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return total // max(1, cpus)
