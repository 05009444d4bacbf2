"""The init image of img2img and upscale: strength, output size, and the file's header check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIN_STRENGTH = 0.05
MAX_STRENGTH = 1.0
DEFAULT_STRENGTH = 0.6
UPSCALE_STRENGTH = 0.35
MAX_UPSCALE = 4.0
MAX_SIDE = 2048
MAX_INIT_PIXELS = 40_000_000  # refuse decompression bombs before decoding


def check_strength(value: Any) -> float:
    """The strength as a float in [0.05, 1.0]; else ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"strength: must be a number (got {value!r})")
    if not MIN_STRENGTH <= value <= MAX_STRENGTH:
        raise ValueError(
            f"strength: must be between {MIN_STRENGTH} and {MAX_STRENGTH} (got {value})"
        )
    return float(value)


def round8(value: float) -> int:
    """The nearest multiple of 8, at least 64."""
    return max(64, round(value / 8) * 8)


def fit_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """Scale (width, height) to the pixel count of max_width×max_height, aspect kept, sides ×8.

    Sides are rounded down (never more pixels than allowed), except that no side goes below 64.
    """
    scale = (max_width * max_height / (width * height)) ** 0.5
    w, h = width * scale, height * scale
    # Never more pixels than allowed: round down, and keep each side within the limits.
    w8, h8 = max(64, int(w) // 8 * 8), max(64, int(h) // 8 * 8)
    return min(w8, MAX_SIDE), min(h8, MAX_SIDE)


def upscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """The size an upscale by `factor` makes; ValueError past the size limit."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 < factor <= 4:
        raise ValueError(
            f"upscale: factor must be above 1 and at most {MAX_UPSCALE:g} (got {factor})"
        )
    w, h = round8(width * factor), round8(height * factor)
    if max(w, h) > MAX_SIDE:
        raise ValueError(
            f"upscale: {factor:g}x of {width}x{height} is {w}x{h}, over the largest size "
            f"{MAX_SIDE} px a side"
        )
    return w, h


def init_image_size(path: str | Path) -> tuple[int, int]:
    """The (width, height) in an image file's header, after checking it is a usable image."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"init_image: no such file: {file}")
    from PIL import Image  # here, not at the top: engine.requests imports this module

    try:
        with Image.open(file) as image:
            size = image.size
            transposed = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ValueError(f"init_image: {file.name} is not a readable image") from None
    if size[0] * size[1] > MAX_INIT_PIXELS:
        raise ValueError(f"init_image: {size[0]}x{size[1]} is over {MAX_INIT_PIXELS} pixels")
    return (size[1], size[0]) if transposed else size
