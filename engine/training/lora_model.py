"""The model side of LoRA training: its pipeline, the adapters, the diffusion loss, the weights."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from engine.training.config import TEXT_ENCODER_TARGETS, UNET_TARGETS, TrainConfig

log = logging.getLogger(__name__)


def load_training_pipeline(model: str, dtype: torch.dtype, device: str) -> Any:
    """Load the pipeline of a standalone training run (no shared inference pipeline)."""
    from engine.optimizations import xformers_available
    from engine.pipeline import load_pipeline, resolve_model_source

    pipe = load_pipeline(resolve_model_source(model), dtype=dtype)
    pipe.to(device)
    if str(device).startswith("cuda") and xformers_available():
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # a broken xformers build: PyTorch SDPA is the default anyway
            log.warning("xformers could not be enabled (%s); using PyTorch SDPA", exc)
    return pipe


def add_lora_adapters(
    unet: Any, text_encoder: Any, config: TrainConfig, adapter_name: str
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Add the training adapter (seeded init); return its UNet and text-encoder parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    def lora_config(targets: tuple[str, ...]) -> Any:
        return LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Sharing a unet with resident inference adapters is the point, not a mistake.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        torch.manual_seed(config.seed)
        unet.add_adapter(lora_config(UNET_TARGETS), adapter_name=adapter_name)
        if config.train_text_encoder:
            te_config = lora_config(TEXT_ENCODER_TARGETS)
            # transformers' own add_adapter insists on peft >= 0.22; inject directly and
            # keep the same bookkeeping diffusers reads (peft_config, _hf_peft_config_loaded).
            inject_adapter_in_model(te_config, text_encoder, adapter_name)
            configs = text_encoder.__dict__.get("peft_config") or {}
            configs[adapter_name] = te_config
            text_encoder.peft_config = configs
            text_encoder._hf_peft_config_loaded = True
    marker = f".{adapter_name}."
    unet_params = [p for n, p in unet.named_parameters() if marker in n]
    te_params = (
        [p for n, p in text_encoder.named_parameters() if marker in n]
        if config.train_text_encoder
        else []
    )
    for param in unet_params + te_params:
        # Trainable weights stay fp32 under fp16/bf16 autocast (the frozen base is half).
        param.data = param.data.float()
    return unet_params, te_params


def lora_state_dicts(
    unet: Any, text_encoder: Any, adapter_name: str, with_text_encoder: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The adapter's weights as peft state dicts (UNet, text encoder or None)."""
    from peft.utils import get_peft_model_state_dict

    unet_state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    te_state = (
        get_peft_model_state_dict(text_encoder, adapter_name=adapter_name)
        if with_text_encoder
        else None
    )
    return unet_state, te_state


def diffusion_loss(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    generator: torch.Generator,
    *,
    device: str,
    base_dtype: torch.dtype,
    autocast_dtype: torch.dtype | None,
    prediction_type: str,
    min_snr_gamma: float,
) -> torch.Tensor:
    """DDPM training loss: noise at a random timestep, predict noise or velocity, optional Min-SNR."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator
    ).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.autocast(
        device_type=torch.device(device).type,
        dtype=autocast_dtype or torch.float32,
        enabled=autocast_dtype is not None,
    ):
        pred = unet(noisy.to(base_dtype), timesteps, hidden.to(base_dtype)).sample
    if prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    per_item = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        alphas = scheduler.alphas_cumprod.to(device)[timesteps].float()
        snr = alphas / (1 - alphas)
        clipped = snr.clamp(max=min_snr_gamma)
        weight = clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
        per_item = per_item * weight
    return per_item.mean()
