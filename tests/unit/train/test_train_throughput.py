"""Throughput arithmetic: MFU against device peaks, ETA, progress text."""

from __future__ import annotations

import pytest
import torch
from kubeforge_trainer.models.build import build_config, build_model, flops_per_token
from kubeforge_trainer.train.throughput import (
    estimate_mfu,
    eta_seconds,
    peak_flops,
    progress_text,
    tokens_per_second,
)


def test_peak_flops_by_device_name_and_precision() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp16") == 312e12
    assert peak_flops("NVIDIA V100", "bf16") is None  # no bf16 tensor cores
    assert peak_flops("Some CPU", "bf16") is None
    assert peak_flops(None, "bf16") is None


def test_mfu_of_the_gpt2_anchor() -> None:
    # The anchor in the issue: GPT-2 124M, 460k tokens/s on one H100 is 40% MFU.
    config = build_config("gpt2", vocab_size=50304, hidden_size=768, layers=12, heads=12, context_length=1024)
    with torch.device("meta"):
        flops = flops_per_token(build_model(config), config, 1024)
    mfu = estimate_mfu(460_000, flops, 1, peak_flops("NVIDIA H100 80GB HBM3", "bf16"))
    assert mfu == pytest.approx(0.40, abs=0.01)
    assert estimate_mfu(460_000, flops, 2, 989e12) == pytest.approx(mfu / 2)
    assert estimate_mfu(1.0, 1.0, 1, None) is None


def test_tokens_per_second_eta_and_progress() -> None:
    assert tokens_per_second(1000, 2.0) == 500
    assert tokens_per_second(1000, 0.0) == 0
    assert eta_seconds(steps_done=10, seconds=5.0, steps_left=30) == 15.0
    assert eta_seconds(0, 5.0, 30) is None
    assert progress_text(120, 1000) == "120/1000 (12%)"
