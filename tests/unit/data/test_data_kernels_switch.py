"""KUBEFORGE_DATA_KERNELS=0 runs the data step's reference path (ops.py, numpy hashes and MinHash minima) with the
same results as the compiled kernels (data/kernels/), and compiles none of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kubeforge_trainer.data import hashing, minhash, stages
from kubeforge_trainer.data.columns import CONTENT_HASH, TEXT
from kubeforge_trainer.data.kernels import SWITCH, enabled, textkernels, textscan
from test_data_fused import BENCH_STEPS, corpus, local_steps, table_of


@pytest.mark.parametrize("value, on", [("0", False), (" 0 ", False), ("1", True), ("", True)])
def test_the_switch_reads_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv(SWITCH, value)
    assert enabled() is on


def test_the_reference_path_gives_the_kernels_results(monkeypatch: pytest.MonkeyPatch) -> None:
    table, steps = table_of(corpus(3000, seed=11)), local_steps(BENCH_STEPS)
    monkeypatch.setenv(SWITCH, "1")
    fast, fast_counts = stages.apply_local_steps(table, steps, content_hash=True)
    fast_sig = minhash.signatures(table.column(TEXT), 32, 3, 5)
    monkeypatch.setenv(SWITCH, "0")
    slow, slow_counts = stages.apply_local_steps(table, steps, content_hash=True)
    slow_sig = minhash.signatures(table.column(TEXT), 32, 3, 5)
    assert fast.num_rows < table.num_rows  # the steps drop rows, so both paths had work to do
    assert slow.equals(fast)
    assert [c[:2] for c in slow_counts] == [c[:2] for c in fast_counts]
    assert np.array_equal(slow_sig, fast_sig)
    assert slow.column(CONTENT_HASH).to_numpy().tolist() == hashing.content_hashes(slow.column(TEXT)).tolist()


def test_the_numpy_row_hash_is_the_compiled_one() -> None:
    rows = [None, "", "a", "abcdefg", "abcdefgh", "abcdefghi", "é" * 13, *("xy" * k for k in range(40))]
    view = textscan.utf8_bytes(table_of(rows).column(TEXT).fill_null(""))
    expected = textkernels.hash_rows(view.data, view.starts, view.ends)
    assert hashing.row_hashes(view.data, view.starts, view.ends).tolist() == expected.tolist()


def test_with_the_switch_off_no_kernel_is_compiled() -> None:
    script = (
        "from kubeforge_trainer.data import minhash, stages\n"
        "from kubeforge_trainer.data.kernels import textkernels, textmarkup\n"
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_data_fused import BENCH_STEPS, corpus, local_steps, table_of\n"
        "table = table_of(corpus(300, seed=3))\n"
        "out, _ = stages.apply_local_steps(table, local_steps(BENCH_STEPS), content_hash=True)\n"
        "minhash.signatures(out.column('text'), 16, 2, 0)\n"
        "used = [d for d in (*vars(textkernels).values(), *vars(textmarkup).values(), minhash._fold_minima)\n"
        "        if hasattr(d, 'signatures') and d.signatures]\n"
        "print(out.num_rows, len(used))\n"
    )
    env = {**os.environ, SWITCH: "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    rows, used = map(int, done.stdout.split())
    assert rows > 0 and used == 0
