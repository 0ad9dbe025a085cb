"""Pure throughput arithmetic: tokens per second, model FLOPs utilisation (MFU) and time to finish."""

from __future__ import annotations

# Dense peak tensor throughput per device in FLOP/s (no sparsity), by precision; matched against the CUDA device
# name, most specific first. fp32 training runs its matmuls in TF32 on these GPUs.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12}),
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "fp32": 1100e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "fp32": 35e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
)


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Peak FLOP/s of one device for a precision, or None when the device is unknown (and for CPUs)."""
    if not device_name:
        return None
    for key, by_precision in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return by_precision.get(precision)
    return None


def estimate_mfu(
    tokens_per_second: float, flops_per_token: float, num_devices: int, peak_flops_per_device: float | None
) -> float | None:
    """Achieved model FLOP/s over the devices' peak (0-1), or None without a known peak."""
    if not peak_flops_per_device or num_devices <= 0:
        return None
    return tokens_per_second * flops_per_token / (num_devices * peak_flops_per_device)


def tokens_per_second(tokens: float, seconds: float) -> float:
    """Throughput; 0 when no time has passed."""
    return tokens / seconds if seconds > 0 else 0.0


def eta_seconds(steps_done: int, seconds: float, steps_left: int) -> float | None:
    """Seconds to finish at the pace of steps_done steps in seconds; None before the first timed step."""
    if steps_done <= 0 or seconds <= 0:
        return None
    return steps_left * seconds / steps_done


def progress_text(step: int, total_steps: int) -> str:
    """Short progress text for the status, e.g. '120/1000 (12%)'."""
    share = 100 * step // total_steps if total_steps else 0
    return f"{step}/{total_steps} ({share}%)"
