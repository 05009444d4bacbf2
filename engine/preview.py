"""Cheap previews of an image still being denoised, decoded straight from the latents."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

# A linear map from SD v1 latent channels to RGB (a least-squares fit, widely used for previews).
SD1_LATENT_TO_RGB = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)


def latents_to_preview(latents: torch.Tensor, max_side: int = 128) -> Image.Image:
    """A small RGB image of the first latent in a batch, without running the VAE."""
    latent = latents[0].detach().float().cpu()
    if latent.shape[0] == 4:
        rgb = torch.einsum("chw,cr->rhw", latent, SD1_LATENT_TO_RGB)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    else:  # unknown latent space: show the first three channels, each stretched to [0, 1]
        rgb = latent[:3]
        lo = rgb.amin(dim=(1, 2), keepdim=True)
        hi = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - lo) / (hi - lo + 1e-6)
    array = (rgb.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    image = Image.fromarray(array)
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def preview_or_none(latents: Any, max_side: int) -> Image.Image | None:
    """latents_to_preview, or None when there are no latents to show."""
    if latents is None or not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        return None
    return latents_to_preview(latents, max_side)
