"""The data step's allocator settings: big arrays come from the heap and their memory is reused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")

# Bytes held in mmap'd chunks while a 20 MB array is alive, in a fresh interpreter (glibc's own counters).
_SCRIPT = """
import ctypes, sys
import numpy as np
from kubeforge_trainer.data.kernels import allocator

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()
array = np.ones(20 << 20, dtype=np.uint8)
print(libc.mallinfo2().hblkhd)
"""


def _mmapped_bytes(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_a_big_array_comes_from_the_reusable_heap_once_the_settings_are_applied():
    assert _mmapped_bytes("default") >= 20 << 20  # glibc's default: fresh pages, handed back when freed
    assert _mmapped_bytes("tuned") < 1 << 20


def test_the_kept_free_memory_is_capped_at_a_fraction_of_the_workers_memory():
    from kubeforge_trainer.data.kernels import allocator

    assert allocator.trim_bytes(64 << 30) == allocator.TRIM_BYTES  # a big worker keeps the full 1 GiB
    assert allocator.trim_bytes(2 << 30) == int(allocator.TRIM_FRACTION * (2 << 30))  # a small one an eighth
    assert 0 < allocator.worker_memory() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
