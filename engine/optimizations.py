"""Device and precision choice, and the memory/speed switches applied to a loaded pipeline."""

from __future__ import annotations

import gc
import importlib.util
import logging
from typing import Any

import torch

from engine.cpu import cpu_dtype
from engine.weight_storage import fp8_supported, store_fp8, stored_fp8

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION_SLICING = "attention slicing"
VAE_SLICING_TILING = "VAE slicing and tiling"
FP8_STORAGE = "fp8 weight storage"
MODEL_OFFLOAD = "model CPU offload"
GROUP_OFFLOAD = "group offload"
SEQUENTIAL_OFFLOAD = "sequential CPU offload"
ONE_BY_ONE = "one image at a time"
# Weakest first: a stronger offload replaces a weaker one (place_on_device picks the strongest).
OFFLOADS = (MODEL_OFFLOAD, GROUP_OFFLOAD, SEQUENTIAL_OFFLOAD)
# The rungs that change where the weights live or how big they are: the only ones a load can use.
PLACEMENT_RUNGS = (FP8_STORAGE, *OFFLOADS)
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
    """The dtype to load in: on CUDA fp16 for 'auto'; on the CPU see engine/cpu.py (bf16 or fp32)."""
    if device == "cpu":
        dtype, choice = cpu_dtype(precision)
        (log.warning if choice.slow else log.info)(
            "precision %s on the CPU: %s", choice.precision, choice.reason
        )
        return dtype
    if not device.startswith("cuda"):
        if precision not in ("auto", "fp32"):
            log.warning("precision %s is not supported on %s; using fp32", precision, device)
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
    applied = configure_pipeline(pipe, opt, device)
    applied += place_on_device(pipe, opt, device)
    return applied + compile_unet(pipe, opt)


def configure_pipeline(pipe: Any, opt: Any, device: str) -> list[str]:
    """The switches that come before placing the pipeline: attention, VAE, memory layout."""
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
        # Not vae.enable_tiling(): each run decides (engine/vae_tiles.py) and tiles seamlessly.
        applied.append("VAE tiling when memory needs it")
    if opt.channels_last and on_cuda:
        pipe.unet.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    elif opt.channels_last:
        # On the CPU it copies every UNet weight (+48 % RSS in bench/) for no speed-up.
        log.info("skipping channels-last on %s: it only pays off on a GPU", device)
    return applied


def compile_unet(pipe: Any, opt: Any) -> list[str]:
    """torch.compile the UNet when asked (after placement: offload hooks wrap the module)."""
    if not opt.enable_torch_compile:
        return []
    pipe.unet = torch.compile(pipe.unet, dynamic=False)
    return ["torch.compile (UNet)"]


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
    """Leaf-level offload with a CUDA stream that prefetches the next layer while one computes.

    Leaf level beat block level on both counts in gpu-frontier.md §2 (645 MB at 2.15 s against
    1,118 MB at 2.25 s, SD v1.5 fp16 512 px on an H200), so it is the group-offload mode.
    """
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
            offload_type="leaf_level",
            use_stream=True,
        )
    return ["group offload (leaf level, CUDA streams)"]


def sdpa_available() -> bool:
    """Whether this torch has scaled_dot_product_attention (PyTorch 2), diffusers' default."""
    return hasattr(torch.nn.functional, "scaled_dot_product_attention")


def memory_rungs(
    sdpa: bool | None = None, *, fp8: bool = False, skip: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The out-of-memory ladder, cheapest saving first; each rung adds to those below it.

    Ordered by the cost measured in gpu-frontier.md §2 (s/image on an H200, SD v1.5 fp16 512 px:
    resident 0.68, fp8 storage 0.99, model offload 1.28, fp8 + model offload 1.40, group offload
    2.15, sequential offload 6.45). `fp8` offers the fp8 weight storage rung (see offers_fp8);
    `skip` drops rungs the configuration already has (configured_offloads).
    Attention slicing is a rung only without SDPA: it replaces the memory-efficient kernel
    (which keeps no score matrix) with a sliced one that does, so on PyTorch 2 it costs memory.
    The last rung (one image at a time) is carried out by the caller, not by the pipeline.
    """
    rungs = (VAE_SLICING_TILING, FP8_STORAGE, *OFFLOADS, ONE_BY_ONE)
    if not (sdpa if sdpa is not None else sdpa_available()):
        rungs = (ATTENTION_SLICING, *rungs)
    return tuple(r for r in rungs if r not in skip and (fp8 or r != FP8_STORAGE))


def describe_rungs(rungs: tuple[str, ...]) -> str:
    """Rung names for people: 'a + b + c' ('' for none; a name may itself contain 'and')."""
    return " + ".join(rungs)


def offers_fp8(pipe: Any, device: str) -> bool:
    """Whether the fp8 rung can help: on CUDA, with float8 in torch, not stored in fp8 already.

    Not on a CPU: the out-of-memory ladder is a GPU matter, and casting every layer there costs
    time for RAM that a CPU host rarely lacks.
    """
    unet = getattr(pipe, "unet", None)
    return device.startswith("cuda") and fp8_supported() and not stored_fp8(unet)


def configured_offloads(opt: Any) -> tuple[str, ...]:
    """The offload rungs the configuration covers already: the one it sets and the weaker ones."""
    flags = (
        opt.enable_model_cpu_offload,
        opt.enable_group_offload,
        opt.enable_sequential_cpu_offload,
    )
    strongest = max((i for i, on in enumerate(flags) if on), default=-1)
    return OFFLOADS[: strongest + 1]


def next_placement_level(rungs: tuple[str, ...], level: int) -> int | None:
    """The lowest level above `level` that adds a placement rung (None: there is none left)."""
    for index in range(level, len(rungs)):
        if rungs[index] in PLACEMENT_RUNGS:
            return index + 1
    return None


AttentionProcessors = dict[str, dict[str, Any]]


def attention_processors(pipe: Any) -> AttentionProcessors:
    """The attention processor of every attention layer, per pipeline component."""
    found: AttentionProcessors = {}
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "attn_processors"):
            found[name] = dict(module.attn_processors)
    return found


def restore_attention_processors(pipe: Any, saved: AttentionProcessors) -> None:
    """Put back processors saved by attention_processors (xformers, SDPA or custom)."""
    for name, processors in saved.items():
        module = getattr(pipe, name, None)
        if module is not None and set(module.attn_processors) == set(processors):
            module.set_attn_processor(dict(processors))  # it pops from the dict it gets


def apply_memory_level(
    pipe: Any,
    opt: Any,
    device: str,
    active: tuple[str, ...],
    attention: AttentionProcessors,
    compute_dtype: torch.dtype,
) -> list[str]:
    """Turn on the savings of the `active` rungs on top of `opt`; turn the others back off.

    Returns what it changed for good: fp8 weight storage is one-way and stays when the level
    goes back down (a reload undoes it).
    """
    if opt.enable_attention_slicing or ATTENTION_SLICING in active:
        pipe.enable_attention_slicing()
    else:
        # Not disable_attention_slicing(): it installs the default, dropping xformers.
        restore_attention_processors(pipe, attention)
    # The tiling of this rung is decided per run (ModelSlot.vae_tile_size), not switched on here.
    if opt.enable_vae_slicing or VAE_SLICING_TILING in active:
        pipe.vae.enable_slicing()
    else:
        pipe.vae.disable_slicing()
    if not device.startswith("cuda"):
        return []
    remove_offload_hooks(pipe)
    # Before any offload hook goes on: offloading must move the float8 copies, not the originals.
    lasting = store_fp8(pipe, compute_dtype) if FP8_STORAGE in active else []
    updates = {
        "enable_model_cpu_offload": opt.enable_model_cpu_offload or MODEL_OFFLOAD in active,
        "enable_group_offload": opt.enable_group_offload or GROUP_OFFLOAD in active,
        "enable_sequential_cpu_offload": opt.enable_sequential_cpu_offload
        or SEQUENTIAL_OFFLOAD in active,
    }
    place_on_device(pipe, opt.model_copy(update=updates), device)
    return lasting


# diffusers' hook names for group offloading (diffusers.hooks.group_offloading).
_GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def remove_offload_hooks(pipe: Any) -> None:
    """Take off every offload hook: accelerate's (model, sequential) and diffusers' group offload.

    pipe.remove_all_hooks() leaves group offloading in place (diffusers 0.42), and with it on,
    model or sequential offload refuse to install and pipe.to() skips those modules. The
    weights stay where the hooks left them (the CPU); the next placement moves them. Other
    diffusers hooks (fp8 layerwise casting) stay.
    """
    pipe.remove_all_hooks()
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for hook in _GROUP_HOOKS:
                    registry.remove_hook(hook, recurse=False)


def release_device(pipe: Any, device: str) -> None:
    """After an out-of-memory error while placing: hooks off, weights back on the CPU, cache freed."""
    if device.startswith("cuda"):
        remove_offload_hooks(pipe)
        pipe.to("cpu", silence_dtype_warnings=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
