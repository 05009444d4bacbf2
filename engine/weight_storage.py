"""Weight storage: keep model weights in float8 and compute each layer in the working precision.

diffusers' layerwise casting stores a module's weights as float8_e4m3fn (1 byte each) and casts
one layer at a time to the compute dtype just before it runs. On a GPU the measured cost is small
(gpu-frontier.md §2: 2,700 -> 1,887 MB allocated with the UNet in fp8, 1,804 MB with the VAE
too, at about 1.4x the resident time); norms and embeddings stay in the working precision
(diffusers' default skip list). On a CPU it saves RAM but costs time (the demo model: 1.1-1.6x).

The change is one-way: the float8 copies replace the originals, so going back needs a reload.
LoRAs load and switch as usual (their matrices stay in the working precision, see
_tag_compute_dtype). Fusing a LoRA into fp8 weights does not work (peft 0.21: "Promotion for
Float8 Types is not supported"), and would round the LoRA's small deltas to fp8's 3-bit mantissa
even if it did: fuse first, then store in fp8.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

FP8 = getattr(torch, "float8_e4m3fn", None)
STORAGES = ("auto", "off", "fp8")
# Components whose weights are stored in fp8, in the order they are converted. The VAE's scores
# on the demo judge held in fp8 (tests/test_demo_quality.py) and it saves ~80 MB on SD v1.5.
FP8_COMPONENTS = ("unet", "vae")
_MARK = "_engine_fp8_storage"


def fp8_supported() -> bool:
    """Whether this torch has the float8_e4m3fn dtype."""
    return FP8 is not None


def stored_fp8(module: Any) -> bool:
    """Whether a module's weights are already stored in fp8 by store_fp8."""
    return bool(getattr(module, _MARK, False))


def store_fp8(
    pipe: Any, compute_dtype: torch.dtype, components: tuple[str, ...] = FP8_COMPONENTS
) -> list[str]:
    """Store the weights of `components` in float8 (computing in compute_dtype); say what changed.

    Idempotent: a component already stored in fp8 is left alone. Must run before any offload
    hooks are installed (offloading moves the float8 copies, not the originals).
    """
    if not fp8_supported():
        raise RuntimeError(
            "this PyTorch has no float8 dtype; upgrade torch or set OPT_WEIGHT_STORAGE=off"
        )
    changed = []
    for name in components:
        module = getattr(pipe, name, None)
        if module is None or stored_fp8(module) or not hasattr(module, "enable_layerwise_casting"):
            continue
        module.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype)
        _tag_compute_dtype(module, compute_dtype)
        setattr(module, _MARK, True)
        changed.append(name)
    if changed:
        log.info("weights stored in fp8 (computed in %s): %s", compute_dtype, ", ".join(changed))
    return [f"fp8 weight storage ({', '.join(changed)})"] if changed else []


def apply_weight_storage(pipe: Any, storage: str, compute_dtype: torch.dtype) -> list[str]:
    """Store the weights as a resolved OPT_WEIGHT_STORAGE says ('off' or 'fp8'); say what changed."""
    return store_fp8(pipe, compute_dtype) if storage == "fp8" else []


def _tag_compute_dtype(module: Any, compute_dtype: torch.dtype) -> None:
    """Give each fp8-stored layer a `compute_dtype` attribute, which peft reads for a LoRA's dtype.

    Without it peft creates a LoRA's A/B matrices in the base layer's weight dtype (float8): the
    LoRA's weights are rounded to fp8 and its forward fails ("mul_cpu_reduced_float" not
    implemented for Float8_e4m3fn). peft takes `compute_dtype` from the base layer when it has
    one (its bitsandbytes path), so the adapters are made and kept in the working precision.
    """
    for layer in module.modules():
        if any(p.dtype == FP8 for p in layer.parameters(recurse=False)):
            layer.compute_dtype = compute_dtype


def weight_bytes(module: Any) -> int:
    """Bytes the module's parameters take as stored now (fp8 layers count 1 byte per weight)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
