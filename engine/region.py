"""Region jobs (inpaint, outpaint) decided: the mask's source, the blur, the canvas geometry.

Pure values and checks, no pixels: engine.requests resolves a request's region fields here, and
engine.inpaint does the pixel work. Sizes stay multiples of 8 within 64-2048 px a side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.init_image import MAX_INIT_PIXELS, MAX_SIDE, fit_size, init_image_size, round8

DEFAULT_MASK_BLUR = 4
MAX_MASK_BLUR = 64
INPAINT_STRENGTH = 1.0  # a region job repaints its region outright unless told otherwise
ZOOMS = (1.5, 2.0)
PANS = ("left", "right", "up", "down")
OUTPAINTS = tuple(f"zoom:{z:g}" for z in ZOOMS) + tuple(f"pan:{p}" for p in PANS)
GRID = 3  # mask_region cells: a 3x3 grid numbered 0-8 from the top left, row by row
# Named regions as (left, top, right, bottom) fractions of the picture.
PRESETS: dict[str, tuple[float, float, float, float]] = {
    "left half": (0.0, 0.0, 0.5, 1.0),
    "right half": (0.5, 0.0, 1.0, 1.0),
    "top half": (0.0, 0.0, 1.0, 0.5),
    "bottom half": (0.0, 0.5, 1.0, 1.0),
    "centre": (0.25, 0.25, 0.75, 0.75),
    "whole picture": (0.0, 0.0, 1.0, 1.0),
}
_ALIASES = {
    "center": "centre",
    "middle": "centre",
    "whole": "whole picture",
    "all": "whole picture",
}
REGION_FIELDS = ("mask_image", "mask_region", "outpaint")  # any one set makes a region job
MAX_REGION_PIXELS = 4  # a source up to 4x the model's native pixel count keeps its own size


@dataclass(frozen=True)
class Layout:
    """An outpaint's canvas size and where the old picture sits in it (left, top, right, bottom)."""

    canvas: tuple[int, int]
    box: tuple[int, int, int, int]


def is_region_job(request: Any) -> bool:
    """Whether a request (GenerationRequest or ResolvedRequest) repaints part of its init image."""
    return any(getattr(request, name, None) for name in REGION_FIELDS)


def parse_region(value: Any) -> tuple[str, frozenset[int]] | None:
    """A mask_region as (preset name, no cells) or ("", cells); None if it is neither."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    name = _ALIASES.get(text, text)
    if name in PRESETS:
        return name, frozenset()
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() and 0 <= int(p) < GRID * GRID for p in parts):
        return None
    return "", frozenset(int(p) for p in parts)


def region_text(value: str) -> str:
    """The canonical form of a valid mask_region: the preset's name, or sorted cell numbers."""
    found = parse_region(value)
    if found is None:
        raise ValueError(_region_problem(value))
    name, cells = found
    return name or ",".join(str(c) for c in sorted(cells))


def _region_problem(value: Any) -> str:
    return (
        "mask_region: must be cell numbers 0-8 of a 3x3 grid (e.g. '0,1,2') or one of "
        f"{', '.join(PRESETS)} (got {value!r})"
    )


def parse_outpaint(value: Any) -> tuple[str, float | str]:
    """An outpaint value as ("zoom", 1.5 | 2.0) or ("pan", side); ValueError if neither."""
    text = value.strip().lower().replace(" ", "") if isinstance(value, str) else ""
    kind, _, arg = text.partition(":")
    if kind == "zoom":
        try:
            factor = float(arg.rstrip("x"))
        except ValueError:
            factor = 0.0
        if factor in ZOOMS:
            return "zoom", factor
    if kind == "pan" and arg in PANS:
        return "pan", arg
    raise ValueError(f"outpaint: must be one of {', '.join(OUTPAINTS)} (got {value!r})")


def check_mask_blur(value: Any) -> int:
    """The mask blur as whole pixels in [0, 64]; else ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"mask_blur: must be a whole number of pixels (got {value!r})")
    if not 0 <= value <= MAX_MASK_BLUR:
        raise ValueError(f"mask_blur: must be between 0 and {MAX_MASK_BLUR} px (got {value})")
    return int(value)


def region_size(width: int, height: int, native: tuple[int, int]) -> tuple[int, int]:
    """The working size of a region job's source: its own, each side rounded to a multiple of 8.

    A source over 4x the model's native pixel count or over 2048 px a side is scaled down to
    the native pixel count instead (aspect kept, as img2img does).
    """
    w, h = round8(width), round8(height)
    if w * h > MAX_REGION_PIXELS * native[0] * native[1] or max(w, h) > MAX_SIDE:
        return fit_size(width, height, *native)
    return w, h


def pan_extension(side: int) -> int:
    """How far a pan extends a side of `side` px: half of it, rounded down to a multiple of 8."""
    return max(8, side // 2 // 8 * 8)


def outpaint_layout(width: int, height: int, outpaint: str) -> Layout:
    """The canvas of an outpaint of a width×height picture (sides multiples of 8 already).

    Zoom keeps the size and shrinks the picture to 1/zoom in the centre; a pan adds half a
    side (rounded down to a multiple of 8) on one side and keeps the picture's pixels.
    """
    kind, arg = parse_outpaint(outpaint)
    if kind == "zoom":
        w, h = round(width / float(arg)), round(height / float(arg))
        left, top = (width - w) // 2, (height - h) // 2
        return Layout((width, height), (left, top, left + w, top + h))
    grow_x = pan_extension(width) if arg in ("left", "right") else 0
    grow_y = pan_extension(height) if arg in ("up", "down") else 0
    left, top = (grow_x if arg == "left" else 0), (grow_y if arg == "up" else 0)
    canvas = (width + grow_x, height + grow_y)
    if max(canvas) > MAX_SIDE:
        raise ValueError(
            f"outpaint: {outpaint} of {width}x{height} makes {canvas[0]}x{canvas[1]}, over the "
            f"largest size {MAX_SIDE} px a side"
        )
    return Layout(canvas, (left, top, left + width, top + height))


def mask_header(path: Any) -> str:
    """Check a mask file is a readable image within the pixel limit; return its path."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"mask_image: must be a file path (got {path!r})")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"mask_image: no such file: {file}")
    from PIL import Image  # here: engine.requests imports this module

    try:
        with Image.open(file) as image:
            if image.width * image.height > MAX_INIT_PIXELS:
                raise ValueError(f"mask_image: {file.name} is over {MAX_INIT_PIXELS} pixels")
            image.thumbnail((256, 256))
            gray = _on_black(image)
    except (OSError, SyntaxError, Image.DecompressionBombError):
        raise ValueError(f"mask_image: {file.name} is not a readable image") from None
    if gray.getextrema()[1] < 128:
        raise ValueError(
            f"mask_image: {file.name} is all black: nothing to repaint (white = repaint)"
        )
    return path


def _on_black(image: Any) -> Any:
    """A mask as grayscale; transparent pixels count as black (kept)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return image.convert("L")


def resolve_region(
    request: Any, native: tuple[int, int], default_blur: int = DEFAULT_MASK_BLUR
) -> dict[str, Any]:
    """The region fields of a request decided: mask source, blur, output size, default strength.

    {} when the request has none. ValueError "field: detail" on the first bad value.
    """
    mask, region, outpaint, blur = (
        request.mask_image, request.mask_region, request.outpaint, request.mask_blur
    )  # fmt: skip
    if mask is None and region is None and outpaint is None:
        if blur is not None:
            raise ValueError("mask_blur: only applies with a mask or an outpaint")
        return {}
    field = (
        "outpaint" if outpaint is not None else "mask_image" if mask is not None else "mask_region"
    )
    if request.init_image is None:
        raise ValueError(f"{field}: needs an init image (the picture to repaint)")
    if request.upscale is not None:
        raise ValueError("upscale: cannot be combined with a mask or an outpaint")
    if outpaint is not None and (mask is not None or region is not None):
        raise ValueError("outpaint: makes its own mask; leave mask_image and mask_region unset")
    if mask is not None and region is not None:
        raise ValueError("mask_region: give a mask image or a region, not both")
    found: dict[str, Any] = {
        "mask_blur": default_blur if blur is None else check_mask_blur(blur),
        "default_strength": INPAINT_STRENGTH,
    }
    if mask is not None:
        found["mask_image"] = mask_header(mask)
    if region is not None:
        found["mask_region"] = region_text(region)
    source = region_size(*init_image_size(request.init_image), native)
    given = (request.width, request.height)
    if outpaint is not None:
        kind, arg = parse_outpaint(outpaint)
        found["outpaint"] = f"{kind}:{arg:g}" if kind == "zoom" else f"{kind}:{arg}"
        if kind == "pan":
            canvas = outpaint_layout(*source, found["outpaint"]).canvas
            if given != (None, None) and given != canvas:
                raise ValueError(
                    f"width: {found['outpaint']} of this image makes {canvas[0]}x{canvas[1]}; "
                    "leave width and height unset"
                )
            found["width"], found["height"] = canvas
            return found
    if given == (None, None):
        found["width"], found["height"] = source
    return found
