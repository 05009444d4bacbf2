"""One run's diffusers call: which pipeline (text-to-image, img2img, inpaint) with which
arguments, and how its output becomes PIL images (the tiny VAE for drafts, paste-back for regions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from engine import img2img, inpaint
from engine.requests import ResolvedRequest


@dataclass
class PipelineCall:
    """The pipeline to call for a resolved request, its extra arguments and its decoding."""

    call: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    region: Any = None
    tiny: Any = None  # the tiny autoencoder that decodes the latents, for a draft

    def images(self, pipe: Any, output: Any) -> list[Any]:
        """The run's PIL images from the pipeline's output."""
        if self.tiny is not None:
            images = tiny_decode(pipe, self.tiny, output.images)
        else:
            images = list(output.images)
        return self.region.paste(images) if self.region is not None else images


def pipeline_call(
    pipe: Any, resolved: ResolvedRequest, upscaler: Any, tiny_vae: Any
) -> PipelineCall:
    """Choose the pipeline for a request: inpaint for a region job, img2img with an init image."""
    region = inpaint.region_job(resolved, pipe)
    if region is not None:
        chosen = PipelineCall(inpaint.inpaint_pipeline(pipe), region=region)
        chosen.kwargs.update(region.pipeline_arguments(pipe.vae_scale_factor))
        chosen.kwargs["strength"] = resolved.strength or 1.0
    elif resolved.init_image is not None:
        chosen = PipelineCall(img2img.img2img_pipeline(pipe))
        chosen.kwargs["image"] = img2img.init_pixels(resolved, upscaler)
        chosen.kwargs["strength"] = resolved.strength
    else:
        chosen = PipelineCall(pipe, {"width": resolved.width, "height": resolved.height})
    # A draft is decoded by the tiny VAE (OPT_TINY_VAE) for this request only.
    if resolved.draft and tiny_vae is not None and pipe.vae is not tiny_vae:
        chosen.tiny = tiny_vae
        chosen.kwargs["output_type"] = "latent"
    return chosen


def tiny_decode(pipe: Any, tiny: Any, latents: Any) -> list[Any]:
    """PIL images of the pipeline's final latents, decoded by the tiny autoencoder."""
    with torch.no_grad():
        scaled = latents.to(tiny.device, tiny.dtype) / tiny.config.scaling_factor
        pixels = tiny.decode(scaled).sample
    return list(pipe.image_processor.postprocess(pixels.float(), output_type="pil"))
