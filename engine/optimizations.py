"""Device and precision choice, and the memory/speed switches applied to a loaded pipeline."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU_ONLY = (
    "enable_model_cpu_offload",
    "enable_sequential_cpu_offload",
    "enable_group_offload",
)


def resolve_device(name: str = "auto") -> str:
    """The torch device to run on: CUDA when available for 'auto', else CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("MODEL_DEVICE=%s but CUDA is not available; running on the CPU", name)
        return "cpu"
    return name


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """fp16 on CUDA for 'auto'; always fp32 on the CPU (half precision there is slow or missing)."""
    if not device.startswith("cuda"):
        if precision not in ("auto", "fp32"):
            log.info("precision %s needs a GPU; using fp32 on %s", precision, device)
        return torch.float32
    if precision == "auto":
        return torch.float16
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16 support; using fp16")
        return torch.float16
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    """'fp32', 'fp16' or 'bf16' for a torch dtype."""
    return {v: k for k, v in DTYPES.items()}[dtype]


def xformers_available() -> bool:
    """Whether the xformers package is importable."""
    return importlib.util.find_spec("xformers") is not None


def apply_optimizations(pipe: Any, opt: Any, device: str) -> list[str]:
    """Apply the switches of an (already preset-resolved) OptimizationConfig; return what was applied."""
    applied: list[str] = []
    on_cuda = device.startswith("cuda")
    skipped = [name for name in GPU_ONLY if getattr(opt, name) and not on_cuda]
    if skipped:
        log.info("skipping GPU-only options on %s: %s", device, ", ".join(skipped))
    if opt.enable_attention_slicing:
        pipe.enable_attention_slicing()
        applied.append("attention slicing")
    elif on_cuda and opt.enable_xformers and xformers_available():
        try:
            pipe.enable_xformers_memory_efficient_attention()
            applied.append("xformers attention")
        except Exception as exc:  # a broken xformers build must not stop the bot
            log.warning("xformers could not be enabled (%s); using PyTorch SDPA", exc)
    if opt.enable_vae_slicing:
        pipe.vae.enable_slicing()
        applied.append("VAE slicing")
    if opt.enable_vae_tiling:
        pipe.vae.enable_tiling()
        applied.append("VAE tiling")
    if opt.channels_last and on_cuda:
        pipe.unet.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    elif opt.channels_last:
        # On the CPU it copies every UNet weight (+48 % RSS in bench/) for no speed-up.
        log.info("skipping channels-last on %s: it only pays off on a GPU", device)
    applied += place_on_device(pipe, opt, device)
    if opt.enable_torch_compile:
        pipe.unet = torch.compile(pipe.unet, dynamic=False)
        applied.append("torch.compile (UNet)")
    return applied


def place_on_device(pipe: Any, opt: Any, device: str) -> list[str]:
    """Move the pipeline to the device, or set up one offload mode (CUDA only)."""
    if device.startswith("cuda"):
        if opt.enable_sequential_cpu_offload:
            pipe.enable_sequential_cpu_offload(device=device)
            return ["sequential CPU offload"]
        if opt.enable_group_offload and hasattr(pipe.unet, "enable_group_offload"):
            return enable_group_offload(pipe, device)
        if opt.enable_model_cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
            return ["model CPU offload"]
    pipe.to(device)
    return []


def enable_group_offload(pipe: Any, device: str) -> list[str]:
    """Block-level offload with a CUDA stream that prefetches the next block while one computes."""
    from diffusers.hooks import apply_group_offloading

    onload = torch.device(device)
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        apply_group_offloading(
            module,
            onload_device=onload,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
    return ["group offload (CUDA streams)"]
