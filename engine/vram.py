"""VRAM presets for small GPUs: the preset table, 'auto', and estimates of a configuration.

The estimate itself is engine/vram_estimate.py (its docstring gives the formula and what each
constant was calibrated on).

Presets follow the footprint rule: each is the fastest configuration (by §2's measured time)
whose expected driver figure fits its card for its design request (``DESIGN_REQUESTS``);
tests/test_engine_vram.py checks PRESETS against ``fastest_fitting``.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.vram_estimate import KNOWN_MODELS, VramEstimate, estimate_vram
from engine.vram_estimate import MB as MB
from engine.vram_estimate import model_param_counts as model_param_counts
from engine.vram_estimate import vae_pass_mb as vae_pass_mb

log = logging.getLogger(__name__)

# Flags each preset turns on; everything else stays off (weight storage "off"). Precision fp16
# on all GPU presets. No preset turns on attention slicing: it replaces PyTorch's memory-efficient
# SDPA kernel (which keeps no score matrix) with a sliced one that does, so on torch 2 it costs
# VRAM. VAE slicing and tiling cost no time on one image (tiling acts only when a decode does not
# fit), so the cards up to 4 GB get both for larger requests; they are outside the footprint rule.
PRESETS: dict[str, dict[str, bool | str]] = {
    "2gb": {
        "weight_storage": "fp8",
        "enable_model_cpu_offload": True,
        "enable_vae_slicing": True,
        "enable_vae_tiling": True,
    },
    "3gb": {"weight_storage": "fp8", "enable_vae_slicing": True, "enable_vae_tiling": True},
    "4gb": {"enable_vae_slicing": True, "enable_vae_tiling": True},
    "6gb": {"enable_vae_slicing": True},
    "8gb": {},
    "none": {},
}
PRESET_FLAGS = (
    "enable_attention_slicing",
    "enable_vae_slicing",
    "enable_vae_tiling",
    "enable_model_cpu_offload",
    "enable_sequential_cpu_offload",
)
# The card each preset is for (MB) and its design request (width, height, images): what must run
# without the OOM ladder. 6gb decodes a 768 px image whole (4gb tiles it); 8gb decodes two at once.
CARD_MB = {"2gb": 2048, "3gb": 3072, "4gb": 4096, "6gb": 6144, "8gb": 8192}
DESIGN_REQUESTS = {
    "2gb": (512, 512, 1),
    "3gb": (512, 512, 1),
    "4gb": (512, 512, 1),
    "6gb": (768, 768, 1),
    "8gb": (768, 768, 2),
}
# Placement and storage, fastest first: gpu-frontier.md §2's s/image (H200, SD v1.5, 512 px, fp16;
# fp16 sequential offload from §1). The footprint rule takes the first that fits the card.
CANDIDATES: tuple[tuple[float, dict[str, bool | str]], ...] = (
    (0.68, {}),
    (0.97, {"weight_storage": "fp8"}),
    (1.28, {"enable_model_cpu_offload": True}),
    (1.40, {"weight_storage": "fp8", "enable_model_cpu_offload": True}),
    (2.15, {"enable_group_offload": True}),
    (2.34, {"weight_storage": "fp8", "enable_group_offload": True}),
    (6.45, {"weight_storage": "fp8", "enable_sequential_cpu_offload": True}),
    (8.25, {"enable_sequential_cpu_offload": True}),
)
PLACEMENT = (
    "weight_storage",
    "enable_model_cpu_offload",
    "enable_group_offload",
    "enable_sequential_cpu_offload",
)
# Free VRAM (MB) 'auto' needs for each preset: its expected driver figure for its design request
# (SD v1.5; tests/test_engine_vram.py recomputes them), rounded up to 10 MB. Free memory is read
# once this process's CUDA context exists, so asking for the whole driver figure again leaves the
# context's size as headroom for kernels loaded later and other programs; a card on the edge gets
# the next preset down, which fits, and OPT_VRAM_PRESET set by hand overrides.
AUTO_THRESHOLDS = (
    ("2gb", 1690),
    ("3gb", 2840),
    ("4gb", 3740),
    ("6gb", 4720),
    ("8gb", 6340),
)


def pick_preset_for_free_vram(free_mb: float) -> str:
    """The preset 'auto' chooses for a GPU with free_mb of free memory."""
    chosen = "2gb"
    for name, need in AUTO_THRESHOLDS:
        if free_mb >= need:
            chosen = name
    return chosen


def free_cuda_vram_mb() -> float | None:
    """Free memory on the current CUDA device in MB, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return free / MB


def resolve_optimizations(opt: Any, device: str, free_mb: float | None = None) -> tuple[Any, str]:
    """Apply the VRAM preset to the flags not set explicitly; return (new config, preset used).

    Weight storage 'auto' becomes what the preset says on CUDA and 'off' elsewhere; an explicit
    'off' or 'fp8' is kept on any device.
    """
    preset = opt.vram_preset
    if preset == "auto":
        if not device.startswith("cuda"):
            preset = "none"
        else:
            free = free_mb if free_mb is not None else free_cuda_vram_mb()
            preset = pick_preset_for_free_vram(free or 0.0)
            log.info("VRAM preset auto: %.0f MB free -> %s", free or 0.0, preset)
    flags = PRESETS[preset]
    updates: dict[str, Any] = {
        name: flags.get(name, False) for name in PRESET_FLAGS if name not in opt.model_fields_set
    }
    storage = getattr(opt, "weight_storage", "off")
    if storage == "auto":
        storage = str(flags.get("weight_storage", "off")) if device.startswith("cuda") else "off"
    updates["weight_storage"] = storage
    return opt.model_copy(update=updates), preset


def estimate_for_config(
    config: Any,
    *,
    width: int,
    height: int,
    batch_size: int,
    img2img: bool = False,
    upscale: bool = False,
) -> VramEstimate:
    """Estimate for an AppConfig as a CUDA run would resolve it (preset applied, fp16 on 'auto').

    For an upscale, width and height are the enlarged size; VAE tiling is on as the run has it.
    Without a GPU, preset 'auto' is estimated as 'none' (what the CPU runs).
    """
    free = free_cuda_vram_mb()
    explicit = config.optimization.vram_preset != "auto"
    device = "cuda" if free is not None or explicit else "cpu"
    opt, preset = resolve_optimizations(config.optimization, device, free_mb=free)
    precision = config.model.precision
    estimate = estimate_vram(
        config.model.model_id,
        precision="fp16" if precision == "auto" else precision,
        width=width,
        height=height,
        batch_size=batch_size,
        guidance=config.generation.guidance_scale > 1,
        attention_slicing=opt.enable_attention_slicing,
        vae_slicing=opt.enable_vae_slicing,
        vae_tiling=opt.enable_vae_tiling or upscale,
        model_cpu_offload=opt.enable_model_cpu_offload,
        sequential_cpu_offload=opt.enable_sequential_cpu_offload,
        group_offload=opt.enable_group_offload,
        weight_storage=opt.weight_storage,
        img2img=img2img or upscale,
    )
    estimate.notes.insert(0, f"preset {preset}: {describe_flags(PRESETS[preset])}")
    return estimate


def describe_flags(flags: dict[str, bool | str]) -> str:
    """A preset's settings in words ('fp16 resident' when it turns nothing on)."""
    words = ["fp8 weight storage"] if flags.get("weight_storage") == "fp8" else []
    words += [
        name.removeprefix("enable_").replace("_", " ").replace("vae", "VAE").replace("cpu", "CPU")
        for name, on in flags.items()
        if name != "weight_storage" and on
    ]
    return ", ".join(words) or "everything on the GPU"


def config_estimate(
    flags: dict[str, bool | str], width: int, height: int, images: int, counts: dict[str, float]
) -> VramEstimate:
    """The estimate for a preset's or candidate's flags at one request size, fp16 with CFG."""
    return estimate_vram(
        precision="fp16",
        width=width,
        height=height,
        batch_size=images,
        vae_slicing=bool(flags.get("enable_vae_slicing")),
        vae_tiling=bool(flags.get("enable_vae_tiling")),
        model_cpu_offload=bool(flags.get("enable_model_cpu_offload")),
        sequential_cpu_offload=bool(flags.get("enable_sequential_cpu_offload")),
        group_offload=bool(flags.get("enable_group_offload")),
        weight_storage=str(flags.get("weight_storage", "off")),
        counts=counts,
    )


def fastest_fitting(preset: str, counts: dict[str, float] | None = None) -> dict[str, bool | str]:
    """The footprint rule: the fastest CANDIDATES entry whose driver figure fits the preset's card.

    The candidate keeps the preset's VAE slicing and tiling (they cost no time on one image);
    it is measured at the preset's design request (SD v1.5 unless counts are given).
    """
    counts = counts or dict(KNOWN_MODELS["sd15"])
    width, height, images = DESIGN_REQUESTS[preset]
    vae = {k: v for k, v in PRESETS[preset].items() if k not in PLACEMENT}
    for _seconds, placement in CANDIDATES:
        flags = {**vae, **placement}
        if config_estimate(flags, width, height, images, counts).driver_mb < CARD_MB[preset]:
            return dict(placement)
    raise ValueError(f"nothing fits a {CARD_MB[preset]} MB card")


def preset_driver_mb(preset: str, counts: dict[str, float] | None = None) -> float:
    """A preset's expected driver figure (MB) for its design request (SD v1.5 by default)."""
    width, height, images = DESIGN_REQUESTS[preset]
    counts = counts or dict(KNOWN_MODELS["sd15"])
    return config_estimate(PRESETS[preset], width, height, images, counts).driver_mb
