"""A before/after proof of a new LoRA: one prompt and seed without and with it, side by side."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from engine.requests import GenerationRequest

LABEL_HEIGHT = 14
GAP = 4


def before_after_png(
    generator: Any, prompt: str, *, seed: int, size: int, lora_path: str | Path, lora_name: str
) -> bytes:
    """PNG of `prompt` at `seed` without (left) and with (right) the LoRA; run on the engine thread."""
    common = {"prompt": prompt, "seed": seed, "width": size, "height": size, "num_images": 1}
    before = generator.run(GenerationRequest(**common)).images[0]
    after = generator.run(
        GenerationRequest(**common, lora=str(lora_path), lora_name=lora_name)
    ).images[0]
    buffer = io.BytesIO()
    side_by_side(before, after, ("without", "with LoRA")).save(buffer, format="PNG")
    return buffer.getvalue()


def side_by_side(left: Image.Image, right: Image.Image, labels: tuple[str, str]) -> Image.Image:
    """Paste two images next to each other on white, each with a small label underneath."""
    width = left.width + GAP + right.width
    height = max(left.height, right.height) + LABEL_HEIGHT
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width + GAP, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    top = height - LABEL_HEIGHT + 1
    draw.text((2, top), labels[0], fill="black", font=font)
    draw.text((left.width + GAP + 2, top), labels[1], fill="black", font=font)
    return canvas
