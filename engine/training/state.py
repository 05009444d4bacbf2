"""Snapshots of a shared pipeline's adapter state, so training can hand it back untouched."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)
_MISSING = object()


def tuner_layers(module: torch.nn.Module | None) -> list[Any]:
    """The peft adapter layers (BaseTunerLayer) inside a module."""
    if module is None:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@dataclass
class PipelineState:
    """Which adapters each layer runs, grad flags, train/eval modes, devices and checkpointing."""

    layers: dict[int, tuple[Any, bool]] = field(default_factory=dict)
    grads: dict[int, bool] = field(default_factory=dict)
    modes: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)
    devices: list[tuple[torch.nn.Module, torch.device]] = field(default_factory=list)
    gradient_checkpointing: bool = False


def capture(modules: list[torch.nn.Module | None], unet: Any) -> PipelineState:
    """Record the state that training changes, for `restore`."""
    state = PipelineState(
        gradient_checkpointing=bool(getattr(unet, "is_gradient_checkpointing", False))
    )
    for module in modules:
        if module is None:
            continue
        for layer in tuner_layers(module):
            active = layer._active_adapter
            state.layers[id(layer)] = (
                list(active) if isinstance(active, list) else active,
                layer._disable_adapters,
            )
        state.grads.update({id(p): p.requires_grad for p in module.parameters()})
        state.modes.append((module, module.training))
        state.devices.append((module, _device_of(module)))
    return state


def restore(
    state: PipelineState, modules: list[torch.nn.Module | None], unet: Any, *, devices: bool = True
) -> None:
    """Put adapter activity, grad flags, modes, devices and checkpointing back as captured.

    Layers created after the capture (the training adapter's) are left with no active adapter,
    which makes them compute exactly the base layer.
    """
    for module in modules:
        if module is None:
            continue
        for layer in tuner_layers(module):
            active, disabled = state.layers.get(id(layer), ([], False))
            layer._active_adapter = list(active) if isinstance(active, list) else active
            layer._disable_adapters = disabled
        for param in module.parameters():
            param.requires_grad_(state.grads.get(id(param), False))
    for module, training in state.modes:
        module.train(training)
    if devices:
        for module, device in state.devices:
            move(module, device)
    if unet is not None and hasattr(unet, "is_gradient_checkpointing"):
        if state.gradient_checkpointing and not unet.is_gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        elif not state.gradient_checkpointing and unet.is_gradient_checkpointing:
            unet.disable_gradient_checkpointing()


def only_adapter(modules: list[torch.nn.Module | None], adapter: str | None) -> None:
    """Make `adapter` the only active one in every layer (None: no adapter at all), enabled."""
    names = [adapter] if adapter else []
    for module in modules:
        for layer in tuner_layers(module):
            # Assigned directly: peft's set_adapter would also flip requires_grad on every layer.
            layer._active_adapter = list(names)
            layer._disable_adapters = False


def _device_of(module: torch.nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def is_hooked(module: torch.nn.Module) -> bool:
    """Whether accelerate offload hooks manage this module's device (then we must not move it)."""
    return hasattr(module, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in module.children())


def move(module: torch.nn.Module | None, device: torch.device | str) -> None:
    """Move a module unless it is already there or managed by offload hooks."""
    if module is None or is_hooked(module):
        return
    if _device_of(module) != torch.device(device):
        module.to(device)


@dataclass
class PeftAttributes:
    """Whether a module had peft layers and its peft bookkeeping attributes before training."""

    had_layers: bool
    peft_config: Any
    loaded_flag: Any


def capture_peft_attributes(module: torch.nn.Module | None) -> PeftAttributes:
    """Record a module's peft bookkeeping before an adapter is added."""
    if module is None:
        return PeftAttributes(False, _MISSING, _MISSING)
    return PeftAttributes(
        bool(tuner_layers(module)),
        module.__dict__.get("peft_config", _MISSING),
        module.__dict__.get("_hf_peft_config_loaded", _MISSING),
    )


def remove_adapter(module: torch.nn.Module | None, adapter: str, before: PeftAttributes) -> None:
    """Delete one adapter; when it was the only one, put back the plain layers and attributes."""
    if module is None or adapter not in (getattr(module, "peft_config", None) or {}):
        return
    from diffusers import ModelMixin
    from diffusers.utils.peft_utils import delete_adapter_layers

    if isinstance(module, ModelMixin):
        module.delete_adapters(adapter)
    else:
        delete_adapter_layers(module, adapter)
    if getattr(module, "peft_config", None):
        return
    if not before.had_layers:
        from diffusers.utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(module)
    for name, value in (
        ("peft_config", before.peft_config),
        ("_hf_peft_config_loaded", before.loaded_flag),
    ):
        if value is _MISSING:
            module.__dict__.pop(name, None)
        else:
            setattr(module, name, value)
