"""Uploaded pictures (img2img sources and masks) checked, fitted and saved once by content."""

from __future__ import annotations

import hashlib
import io
import warnings

from engine.img2img import cover
from engine.init_image import MAX_INIT_PIXELS, fit_size
from storage.files import FileRoots, atomic_write_bytes


class ImageRefused(ValueError):
    """An upload that is not usable; the message names it and says why."""


def store_source(
    files: FileRoots, data: bytes, shown: str, width: int, height: int, exact: bool
) -> tuple[str, int, int]:
    """Fit image bytes to width×height pixels and save them as PNG; (path, width, height).

    ``exact``: centre-cropped to that shape and made exactly that size; otherwise the picture
    keeps its own shape at the pixel count of width×height. Blocking (call it off the loop).
    """
    from engine.prepare_dataset import ImageRejected, load_image

    try:
        image = load_image(io.BytesIO(data), max_pixels=MAX_INIT_PIXELS)  # type: ignore[arg-type]
    except ImageRejected as exc:
        raise ImageRefused(f"{shown} is not usable as an image: {exc}.") from None
    size = (width, height) if exact else fit_size(image.width, image.height, width, height)
    if image.size != size:
        image = cover(image, *size)
    return _save_png(files, image), size[0], size[1]


def store_mask(
    files: FileRoots, data: bytes, shown: str, width: int, height: int, *, invert: bool = False
) -> str:
    """Save a mask at width×height as a grayscale PNG (white = repaint; transparent counts as
    black); ``invert`` swaps white and black first. Blocking (call it off the loop)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_INIT_PIXELS:
                    raise ImageRefused(f"{shown} is over {MAX_INIT_PIXELS} pixels.")
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image) or image
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    image = Image.alpha_composite(black, rgba)
                gray = image.convert("L")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        if isinstance(exc, ImageRefused):
            raise
        raise ImageRefused(f"{shown} is not usable as a mask: not a readable image.") from None
    if invert:
        gray = ImageOps.invert(gray)
    if gray.size != (width, height):
        gray = cover(gray, width, height)
    if gray.getextrema()[1] < 128:
        raise ImageRefused(
            f"`mask`: {shown} is all black: nothing to repaint (paint white where to repaint)."
        )
    return _save_png(files, gray)


def _save_png(files: FileRoots, image: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    png = buffer.getvalue()
    path = files.source_path(hashlib.sha256(png).hexdigest())
    if not path.is_file():  # the same picture is stored once
        atomic_write_bytes(path, png)
    return str(path)
