"""DeepSpeed config from the spec: ZeRO stages, offload, precision, batch, clipping, raw passthrough."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge_trainer.train.dsconfig import (
    build_deepspeed_config,
    deep_merge,
    effective_precision,
    raw_builds_optimizer,
    raw_builds_scheduler,
)


def spec(deepspeed: dict[str, Any] | None = None, **training: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "dataRef": {"uri": "/d"},
            "training": {"maxSteps": 10, "microBatchSize": 4, "gradientAccumulationSteps": 3, **training},
            "deepspeed": deepspeed or {},
            "checkpoint": {"uri": "/c"},
        }
    )


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_with_batch_and_clipping(stage: int) -> None:
    config = build_deepspeed_config(spec({"zeroStage": stage}, gradientClipping=0.5), world_size=4, use_gpu=True)
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 4 * 3 * 4
    assert config["gradient_clipping"] == 0.5
    assert ("stage3_gather_16bit_weights_on_model_save" in config["zero_optimization"]) == (stage == 3)


def test_no_clipping_is_zero() -> None:
    assert build_deepspeed_config(spec(gradientClipping=None), 1, False)["gradient_clipping"] == 0.0


def test_offload_of_optimizer_and_parameters() -> None:
    config = build_deepspeed_config(
        spec({"zeroStage": 3, "offloadOptimizer": "cpu", "offloadParameters": "cpu"}), 2, use_gpu=True
    )
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in build_deepspeed_config(spec({"zeroStage": 2}), 2, True)["zero_optimization"]


@pytest.mark.parametrize(("world_size", "use_gpu", "overlap"), [(1, True, False), (2, True, True), (2, False, False)])
def test_gradient_reduction_overlaps_the_backward_only_with_gpus_to_reduce_over(
    world_size: int, use_gpu: bool, overlap: bool
) -> None:
    config = build_deepspeed_config(spec({"zeroStage": 2}), world_size, use_gpu)
    assert config["zero_optimization"]["overlap_comm"] is overlap


def test_bf16_skips_deepspeeds_per_tensor_overflow_check_unless_the_raw_config_asks() -> None:
    assert build_deepspeed_config(spec(), 1, True)["bf16"] == {"enabled": True, "check_grad_overflow": False}
    raw = {"bf16": {"check_grad_overflow": True}}
    assert build_deepspeed_config(spec({"config": raw}), 1, True)["bf16"]["check_grad_overflow"] is True


@pytest.mark.parametrize(
    ("precision", "use_gpu", "bf16", "fp16"),
    [
        ("bf16", True, True, False),
        ("fp16", True, False, True),
        ("fp32", True, False, False),
        ("bf16", False, False, False),
    ],
)
def test_precision_and_its_cpu_fallback(precision: str, use_gpu: bool, bf16: bool, fp16: bool) -> None:
    config = build_deepspeed_config(spec(precision=precision), 1, use_gpu)
    assert config["bf16"]["enabled"] is bf16
    assert config["fp16"]["enabled"] is fp16
    if fp16:
        assert config["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert effective_precision(precision, use_gpu) == ("fp32" if not use_gpu else precision)


def test_raw_keys_merge_over_the_generated_config() -> None:
    raw = {"zero_optimization": {"reduce_bucket_size": 12345}, "communication_data_type": "fp32", "zero_stage": None}
    config = build_deepspeed_config(spec({"zeroStage": 2, "config": raw}), 2, True)
    assert config["zero_optimization"]["reduce_bucket_size"] == 12345
    assert config["zero_optimization"]["stage"] == 2  # siblings survive the merge
    assert config["communication_data_type"] == "fp32"


def test_raw_keys_that_contradict_the_spec_name_the_field_to_use() -> None:
    with pytest.raises(ValueError, match=r"spec.deepspeed.config.zero_optimization.stage: 3 conflicts with "):
        build_deepspeed_config(spec({"zeroStage": 2, "config": {"zero_optimization": {"stage": 3}}}), 1, True)
    with pytest.raises(ValueError, match=r"train_micro_batch_size_per_gpu: 8 conflicts with spec.training.microBatch"):
        build_deepspeed_config(spec({"config": {"train_micro_batch_size_per_gpu": 8}}), 1, True)
    # Repeating the spec's own value is fine.
    build_deepspeed_config(spec({"config": {"gradient_accumulation_steps": 3}}), 1, True)


def test_raw_optimizer_and_scheduler_replace_the_spec_ones() -> None:
    raw = {"optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}}
    assert raw_builds_optimizer(spec({"config": raw}))
    assert not raw_builds_scheduler(spec({"config": raw}))
    assert raw_builds_scheduler(spec({"config": {"scheduler": {"type": "WarmupLR"}}}))


def test_deep_merge_does_not_touch_its_inputs() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    override = {"a": {"b": 3}, "d": [2]}
    assert deep_merge(base, override) == {"a": {"b": 3, "c": 2}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
