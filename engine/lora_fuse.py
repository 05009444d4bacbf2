"""Fuse one LoRA adapter into the UNet's weights while drafts run, and take it out exactly.

A fused adapter costs nothing per step (peft's merged layers run the base layer alone), but peft's
unmerge subtracts the delta again, and (W + d) - d is not W in floating point: on the tiny model
about 12 % of the touched weights came back one rounding off. So fusing also keeps the original
value of every weight the round trip would not give back (its flat index and value; most come
back exactly), and unfusing writes those back: the UNet is bit-identical afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.weight_storage import stored_fp8

log = logging.getLogger(__name__)


@dataclass
class FusedAdapter:
    """An adapter merged into the weights, with what restores them exactly."""

    adapter: str
    # (layer, flat indices, original values) of the weights the plain unmerge would get wrong.
    fixups: list[tuple[Any, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    layers: list[Any] = field(default_factory=list)

    @property
    def kept_bytes(self) -> int:
        """Memory held to restore the weights exactly."""
        return sum(i.numel() * i.element_size() + v.nbytes for _, i, v in self.fixups)


def lora_layers(module: Any, adapter: str) -> list[Any]:
    """The peft LoRA layers of `module` that hold `adapter`."""
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


def fusable(unet: Any) -> str | None:
    """Why the UNet's weights must not be fused into now; None when they may.

    fp8-stored weights would lose the LoRA's precision; offloaded weights (accelerate or
    diffusers hooks, weights on the meta device) are not the ones the next step computes with.
    """
    if unet is None:
        return "no UNet"
    if stored_fp8(unet):
        return "its weights are stored in fp8"
    for module in unet.modules():
        if getattr(module, "_hf_hook", None) is not None:
            return "it is offloaded"
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and any("offload" in name for name in registry.hooks):
            return "it is group-offloaded"
    if any(p.device.type == "meta" for p in unet.parameters()):
        return "its weights are offloaded"
    return None


def fuse(unet: Any, adapter: str) -> FusedAdapter:
    """Merge `adapter` (at its current scale) into the UNet's weights, remembering what restores them."""
    started = time.perf_counter()
    fused = FusedAdapter(adapter)
    with torch.no_grad():
        for layer in lora_layers(unet, adapter):
            weight = layer.get_base_layer().weight
            original = weight.detach().clone()
            layer.merge(adapter_names=[adapter])
            # Exactly what unmerge will compute (the same delta, subtracted the same way).
            back = weight.detach() - layer.get_delta_weight(adapter)
            wrong = (back != original).flatten().nonzero().flatten()
            if wrong.numel():
                index = wrong.to(torch.int32 if original.numel() < 2**31 else torch.int64)
                fused.fixups.append((layer, index, original.flatten()[wrong].clone()))
            fused.layers.append(layer)
    log.info(
        "fused LoRA %s into %d layers in %.2fs (%.1f MB kept to unfuse exactly)",
        adapter,
        len(fused.layers),
        time.perf_counter() - started,
        fused.kept_bytes / 1e6,
    )
    return fused


def unfuse(fused: FusedAdapter) -> None:
    """Take a fused adapter out of the weights again; they are bit-identical to before `fuse`."""
    started = time.perf_counter()
    with torch.no_grad():
        for layer in fused.layers:
            layer.unmerge()
        for layer, index, values in fused.fixups:
            weight = layer.get_base_layer().weight
            weight.data.view(-1)[index.long()] = values
    log.info("unfused LoRA %s in %.2fs", fused.adapter, time.perf_counter() - started)
