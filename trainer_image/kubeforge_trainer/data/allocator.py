"""glibc malloc settings for the data step's worker processes: freed memory is kept for the next block.

Every block stage allocates arrays of tens of MB (a byte per byte of text, 8 bytes per word) and frees them when the
block is done. With glibc's defaults an allocation over its mmap threshold (128 KiB, rising with use to at most
32 MiB) gets fresh pages from the kernel, and freeing it hands them back: in the benchmark the page faults were about a
fifth of the workers' CPU time. With the threshold at its maximum and up to TRIM_BYTES of free memory kept, block
after block reuses the same pages. A DataPipeline's Ray workers run nothing but the data step, so the setting stays
within it; it stops at what a worker's blocks need at their peak.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD_BYTES = 32 << 20
"""Allocations up to this size come from the heap, whose freed memory is reused (glibc's largest allowed value)."""
TRIM_BYTES = 1 << 30
"""Free memory at the top of the heap kept for reuse, not returned to the kernel."""

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
            settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, TRIM_BYTES))
            _applied.append(all(mallopt(option, value) == 1 for option, value in settings))
    return _applied[0]
