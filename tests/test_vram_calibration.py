"""The VRAM estimator against the peaks measured on a GPU (/work/shared/gpu-frontier.md §1, §2).

Full-size SD v1.5, 512×512, fp16, 20 steps, CFG 7.5, one image; the figures are
``torch.cuda.max_memory_allocated`` in MB.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import AppConfig, GenerationConfig, ModelConfig, OptimizationConfig
from engine.vram import estimate_for_config, estimate_vram

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SLICE_TILE = {"vae_slicing": True, "vae_tiling": True}

# (label, estimate_vram keyword arguments, measured alloc MB)
MEASURED: list[tuple[str, dict[str, Any], float]] = [
    ("§1 preset none", {}, 2700),
    ("§1 preset 4gb", SLICE_TILE, 2700),
    ("§1 preset 3gb", {**SLICE_TILE, "model_cpu_offload": True}, 1816),
    ("§1 preset 2gb", {**SLICE_TILE, "sequential_cpu_offload": True}, 645),
    ("§1 offload group (block level)", {"group_offload": True}, 1118),
    ("§2 fp16 resident", {}, 2700),
    ("§2 fp8 UNet, resident", {"weight_storage": "fp8"}, 1887),
    ("§2 fp16 model offload", {"model_cpu_offload": True}, 1816),
    ("§2 fp8 UNet + model offload", {"weight_storage": "fp8", "model_cpu_offload": True}, 1003),
    ("§2 group offload leaf", {"group_offload": True, "group_offload_level": "leaf"}, 645),
    ("§2 group offload block", {"group_offload": True, "group_offload_level": "block"}, 1118),
    (
        "§2 fp8 UNet + group offload leaf",
        {"weight_storage": "fp8", "group_offload": True, "group_offload_level": "leaf"},
        645,
    ),
    ("§2 fp8 UNet + sequential", {"weight_storage": "fp8", "sequential_cpu_offload": True}, 645),
]

# The estimates before the calibration (gpu-frontier.md §1) and what they were off by.
OLD_ERRORS = [
    ("§1 preset 3gb", {**SLICE_TILE, "model_cpu_offload": True}, 1816, 0.18),
    ("§1 preset 2gb", {**SLICE_TILE, "sequential_cpu_offload": True}, 645, 0.35),
    ("§1 offload group (block level)", {"group_offload": True}, 1118, -0.22),
]


def error(kwargs: dict[str, Any], measured: float) -> float:
    """Relative error of the estimate for these settings against the measured peak."""
    return (
        estimate_vram(SD15, precision="fp16", width=512, height=512, **kwargs).total_mb / (measured)
        - 1
    )


@pytest.mark.parametrize(("label", "kwargs", "measured"), MEASURED, ids=[m[0] for m in MEASURED])
def test_estimate_within_ten_percent_of_measured(
    label: str, kwargs: dict[str, Any], measured: float
) -> None:
    assert abs(error(kwargs, measured)) <= 0.10, label


@pytest.mark.parametrize(("label", "kwargs", "measured", "old"), OLD_ERRORS)
def test_old_errors_no_longer_hold(
    label: str, kwargs: dict[str, Any], measured: float, old: float
) -> None:
    assert abs(error(kwargs, measured) - old) > 0.1, label


def test_fp8_storage_halves_the_unet_weights_only() -> None:
    fp16 = estimate_vram(SD15)
    fp8 = estimate_vram(SD15, weight_storage="fp8")
    assert fp8.weights_mb["unet"] == pytest.approx(fp16.weights_mb["unet"] / 2)
    assert fp8.weights_mb["vae"] == fp16.weights_mb["vae"]
    with pytest.raises(ValueError, match="weight_storage"):
        estimate_vram(SD15, weight_storage="int4")
    with pytest.raises(ValueError, match="group_offload_level"):
        estimate_vram(SD15, group_offload=True, group_offload_level="module")


@pytest.mark.parametrize(
    ("preset", "fields", "measured"),
    [
        ("none", {}, 2700),
        ("4gb", {}, 2700),
        ("3gb", {}, 1816),
        ("2gb", {}, 645),
        ("none", {"enable_group_offload": True}, 1118),  # the engine applies block level
    ],
)
def test_config_estimates_match_the_measured_presets(
    preset: str, fields: dict[str, Any], measured: float
) -> None:
    config = AppConfig(
        model=ModelConfig(model_id=SD15, precision="fp16"),
        optimization=OptimizationConfig(vram_preset=preset, **fields),
        generation=GenerationConfig(guidance_scale=7.5),
    )
    est = estimate_for_config(config, width=512, height=512, batch_size=1)
    assert abs(est.total_mb / measured - 1) <= 0.10
