"""The VRAM estimator against the peaks measured on a GPU (/work/shared/gpu-frontier.md §1, §2).

Full-size SD v1.5, 512×512, fp16, 20 steps, CFG 7.5, one image; the figures are
``torch.cuda.max_memory_allocated`` in MB (and §2's ``max_memory_reserved`` for the reserve).
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import AppConfig, GenerationConfig, ModelConfig, OptimizationConfig
from engine.vram import estimate_for_config, estimate_vram
from engine.vram_estimate import CUDA_CONTEXT_MB, FP8_STORED, VramEstimate
from engine.weight_storage import FP8_COMPONENTS

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SLICE_TILE = {"vae_slicing": True, "vae_tiling": True}
UNET_FP8 = {"weight_storage": "fp8", "fp8_components": ("unet",)}  # §2 stored the UNet alone
BLOCK = {"group_offload": True, "group_offload_level": "block"}
LEAF = {"group_offload": True, "group_offload_level": "leaf"}

# (label, estimate_vram keyword arguments, measured alloc MB)
MEASURED: list[tuple[str, dict[str, Any], float]] = [
    ("§1 preset none", {}, 2700),
    ("§1 preset 4gb", SLICE_TILE, 2700),
    ("§1 old preset 3gb", {**SLICE_TILE, "model_cpu_offload": True}, 1816),
    ("§1 old preset 2gb", {**SLICE_TILE, "sequential_cpu_offload": True}, 645),
    ("§1 offload group (block level)", BLOCK, 1118),
    ("§2 fp16 resident", {}, 2700),
    ("§2 fp8 UNet, resident", UNET_FP8, 1887),
    ("§2 fp8 UNet + VAE, resident", {"weight_storage": "fp8"}, 1804),
    ("§2 fp16 model offload", {"model_cpu_offload": True}, 1816),
    ("§2 fp8 UNet + model offload", {**UNET_FP8, "model_cpu_offload": True}, 1003),
    ("§2 group offload leaf", LEAF, 645),
    ("§2 group offload block", BLOCK, 1118),
    ("§2 fp8 UNet + group offload leaf", {**UNET_FP8, **LEAF}, 645),
    ("§2 fp8 UNet + sequential", {**UNET_FP8, "sequential_cpu_offload": True}, 645),
]
# §2's max_memory_reserved: what the estimate plus the allocator's reserve must reach.
RESERVED: list[tuple[str, dict[str, Any], float]] = [
    ("fp16 resident", {}, 3270),
    ("fp8 UNet, resident", UNET_FP8, 2522),
    ("fp8 UNet + VAE, resident", {"weight_storage": "fp8"}, 2444),
    ("fp16 model offload", {"model_cpu_offload": True}, 1932),
    ("fp8 UNet + model offload", {**UNET_FP8, "model_cpu_offload": True}, 1292),
    ("group offload leaf", LEAF, 1386),
    ("group offload block", BLOCK, 2332),
    ("fp8 UNet + group offload leaf", {**UNET_FP8, **LEAF}, 1416),
    ("fp8 UNet + sequential", {**UNET_FP8, "sequential_cpu_offload": True}, 676),
]

# The estimates before the calibration (gpu-frontier.md §1) and what they were off by.
OLD_ERRORS = [
    ("§1 preset 3gb", {**SLICE_TILE, "model_cpu_offload": True}, 1816, 0.18),
    ("§1 preset 2gb", {**SLICE_TILE, "sequential_cpu_offload": True}, 645, 0.35),
    ("§1 offload group (block level)", BLOCK, 1118, -0.22),
]


def estimate(kwargs: dict[str, Any]) -> VramEstimate:
    """The estimate for these settings at the measured size."""
    return estimate_vram(SD15, precision="fp16", width=512, height=512, **kwargs)


def error(kwargs: dict[str, Any], measured: float) -> float:
    """Relative error of the estimate for these settings against the measured peak."""
    return estimate(kwargs).total_mb / measured - 1


@pytest.mark.parametrize(("label", "kwargs", "measured"), MEASURED, ids=[m[0] for m in MEASURED])
def test_estimate_within_ten_percent_of_measured(
    label: str, kwargs: dict[str, Any], measured: float
) -> None:
    assert abs(error(kwargs, measured)) <= 0.10, label


@pytest.mark.parametrize(("label", "kwargs", "measured"), RESERVED, ids=[r[0] for r in RESERVED])
def test_estimate_plus_reserve_within_ten_percent_of_reserved(
    label: str, kwargs: dict[str, Any], measured: float
) -> None:
    est = estimate(kwargs)
    assert abs((est.total_mb + est.reserve_mb) / measured - 1) <= 0.10, label
    assert est.driver_mb == est.total_mb + est.reserve_mb + CUDA_CONTEXT_MB


@pytest.mark.parametrize(("label", "kwargs", "measured", "old"), OLD_ERRORS)
def test_old_errors_no_longer_hold(
    label: str, kwargs: dict[str, Any], measured: float, old: float
) -> None:
    assert abs(error(kwargs, measured) - old) > 0.1, label


def test_fp8_storage_halves_the_unet_and_vae_weights_only() -> None:
    fp16 = estimate_vram(SD15)
    fp8 = estimate_vram(SD15, weight_storage="fp8")
    assert fp8.weights_mb["unet"] == pytest.approx(fp16.weights_mb["unet"] / 2)
    assert fp8.weights_mb["vae"] == pytest.approx(fp16.weights_mb["vae"] / 2)
    assert fp8.weights_mb["text_encoder"] == fp16.weights_mb["text_encoder"]
    assert FP8_STORED == FP8_COMPONENTS  # the estimate stores what the engine stores
    unet_only = estimate_vram(SD15, weight_storage="fp8", fp8_components=("unet",))
    assert unet_only.weights_mb["vae"] == fp16.weights_mb["vae"]
    with pytest.raises(ValueError, match="weight_storage"):
        estimate_vram(SD15, weight_storage="int4")
    with pytest.raises(ValueError, match="group_offload_level"):
        estimate_vram(SD15, group_offload=True, group_offload_level="module")


@pytest.mark.parametrize(
    ("preset", "fields", "measured"),
    [
        ("none", {}, 2700),
        ("4gb", {}, 2700),
        ("3gb", {}, 1804),  # fp8 UNet + VAE, resident
        (
            "2gb",
            {},
            1003,
        ),  # fp8 + model offload (§2 stored the UNet alone; the VAE is not the peak)
        ("none", {"enable_group_offload": True}, 645),  # the engine applies leaf level
        ("3gb", {"weight_storage": "off"}, 2700),  # set explicitly, so the preset leaves it
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
