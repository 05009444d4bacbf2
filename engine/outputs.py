"""What a run leaves behind: each image's parameters text, the NSFW flags, the saved PNGs."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import img2img, inpaint
from engine.lora import lora_display_name
from engine.metadata import format_parameters, save_png
from engine.requests import ResolvedRequest


def parameters_text(
    resolved: ResolvedRequest,
    seed: int,
    model: str,
    default_lora: tuple[str, float] | None,
    upscaler: str,
) -> str:
    """The PNG parameters text of one image of a request (`upscaler`: the enlarger's name)."""
    lora_name = resolved.lora_name or (lora_display_name(resolved.lora) if resolved.lora else None)
    scale: float | None = resolved.lora_scale
    if lora_name is None and default_lora is not None:
        lora_name, scale = default_lora
    return format_parameters(
        prompt=resolved.prompt,
        negative_prompt=resolved.negative_prompt,
        steps=resolved.num_inference_steps,
        sampler=resolved.scheduler,
        cfg_scale=resolved.guidance_scale,
        seed=seed,
        width=resolved.width,
        height=resolved.height,
        model=model,
        lora=lora_name,
        lora_scale=scale,
        extra=_extra_parameters(resolved, upscaler),
    )


def _extra_parameters(resolved: ResolvedRequest, upscaler: str) -> dict[str, Any] | None:
    extra: dict[str, Any] = {}
    if resolved.loras:
        extra["LoRAs"] = ", ".join(f"{u.name}:{u.weight:g}" for u in resolved.loras)
    if resolved.draft:
        extra["Draft"] = f"{resolved.scheduler}-LoRA"  # LCM-LoRA, TCD-LoRA
    if resolved.init_image is not None and resolved.strength is not None:
        extra.update(img2img.img2img_fields(resolved.strength, resolved.upscale, upscaler))
    extra.update(inpaint.region_fields(resolved))
    return extra or None


class SafetyChecker:
    """The model's own safety checker, run beside the pipeline so images are flagged, not blacked out."""

    def __init__(self, checker: Any, extractor: Any, device: str, dtype: Any) -> None:
        self.checker = checker
        self.extractor = extractor
        self.device = device
        self.dtype = dtype

    def flags(self, images: list[Any]) -> list[bool]:
        """Whether each image is flagged as NSFW."""
        import numpy as np

        inputs = self.extractor(images, return_tensors="pt").to(self.device)
        arrays = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])
        self.checker.to(self.device)
        _, flags = self.checker(images=arrays, clip_input=inputs.pixel_values.to(self.dtype))
        return [bool(f) for f in flags]


def save_pngs(images: list[Any], folder: Path, prefix: str = "gen") -> list[Path]:
    """Save PNGs with their parameters chunk as FOLDER/PREFIX_YYYYMMDD_HHMMSS_NNN.png."""
    folder.mkdir(parents=True, exist_ok=True)
    safe_prefix = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)[:40] or "gen"
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    paths: list[Path] = []
    index = 0
    for image in images:
        while (path := folder / f"{safe_prefix}_{stamp}_{index:03d}.png").exists():
            index += 1
        save_png(image, path, image.info.get("parameters"))
        paths.append(path)
        index += 1
    return paths
