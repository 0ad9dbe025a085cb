"""The data step's fast path: compiled (numba, with LLVM intrinsics) and byte-level numpy loops over a string column's
UTF-8 buffer, beside the reference path of pyarrow.compute kernels and RE2 expressions in data/ops.py.

What they accelerate:
- fused.py, textkernels.py, textmarkup.py, swar.py: the row-local cleaning operations (dropEmpty, stripHtml,
  normalizeUnicode, collapseWhitespace, maskPii, lengthFilter, qualityFilter) in one compiled pass per block, rows
  it cannot settle handed to ops.py; and the content hash of exact dedup, splits and the leakage check
  (textkernels.hash_rows / normalized_hash_rows: the hash of the normalised text without building it);
- textscan.py, textclasses.py: byte scans used as prefilters by ops.py (a row the scan leaves out cannot match, and
  skips the RE2 kernel), and the whitespace classes both paths share;
- allocator.py: glibc malloc settings so each block's arrays reuse the previous block's pages.

How they are checked: tests/unit/data/test_data_fused.py, test_data_markup.py and test_data_textscan.py run the
kernels and the reference operations on the same generated rows (tags, entities, PII, Unicode spaces, controls,
nulls) and require identical rows, text, statistics and hashes; test_data_kernels_switch.py runs the pipeline's
stages both ways and compares them.

How to turn them off: KUBEFORGE_DATA_KERNELS=0 in the environment of the data step's processes (Ray workers inherit
it from the driver's runtime environment) runs the reference path: every cleaning operation through ops.py, the
content hashes computed by numpy (hashing.py) with the same values, MinHash's minima by numpy. Outputs are the same
either way; only the speed differs. The byte scans of textscan.py are plain numpy and stay on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH = "KUBEFORGE_DATA_KERNELS"
"""The environment variable that turns the compiled kernels off ("0")."""


def enabled() -> bool:
    """Whether the data step uses its compiled kernels (KUBEFORGE_DATA_KERNELS is not "0")."""
    return os.environ.get(SWITCH, "1").strip() != "0"


@contextmanager
def switched_on() -> Iterator[None]:
    """The kernels on within the block, whatever the environment says (compiling them into their cache)."""
    before = os.environ.get(SWITCH)
    os.environ[SWITCH] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = before
