"""/imagine attachments: an img2img source (checked, fitted to size) and its mask, saved once by
content."""

from __future__ import annotations

import asyncio
import hashlib
import io

import discord

from cogs._attachments import check_attachment, read_attachment, shown_name
from cogs._checks import UserFacingError
from engine.img2img import cover
from engine.init_image import MAX_INIT_PIXELS, fit_size
from storage.files import FileRoots, atomic_write_bytes


async def save_source(
    files: FileRoots,
    attachment: discord.Attachment,
    width: int,
    height: int,
    max_mb: float,
    *,
    exact: bool = False,
) -> tuple[str, int, int]:
    """Check and fit an attachment to width×height pixels; return (stored path, width, height).

    ``exact``: the member chose this size, so the picture is centre-cropped to its shape and
    made exactly that size; otherwise it keeps its own shape at the pixel count of width×height.
    """
    check_attachment(attachment, max_mb)
    data = await read_attachment(attachment, max_mb)
    shown = shown_name(attachment.filename)
    return await asyncio.to_thread(_store, files, data, shown, width, height, exact)


def _store(
    files: FileRoots, data: bytes, shown: str, width: int, height: int, exact: bool
) -> tuple[str, int, int]:
    from engine.prepare_dataset import ImageRejected, load_image

    try:
        image = load_image(io.BytesIO(data), max_pixels=MAX_INIT_PIXELS)  # type: ignore[arg-type]
    except ImageRejected as exc:
        raise UserFacingError(f"{shown} is not usable as an image: {exc}.") from None
    size = (width, height) if exact else fit_size(image.width, image.height, width, height)
    if image.size != size:
        image = cover(image, *size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png = buffer.getvalue()
    path = files.source_path(hashlib.sha256(png).hexdigest())
    if not path.is_file():  # the same picture is stored once
        atomic_write_bytes(path, png)
    return str(path), size[0], size[1]


async def save_mask(
    files: FileRoots, attachment: discord.Attachment, width: int, height: int, max_mb: float
) -> str:
    """Check an /imagine mask and store it at width×height (the source's stored size), as a
    grayscale PNG (white = repaint; transparent counts as black, kept); return its path.

    It is centre-cropped and resized as the source was, so a mask drawn on the picture stays
    on the same pixels.
    """
    check_attachment(attachment, max_mb)
    data = await read_attachment(attachment, max_mb)
    shown = shown_name(attachment.filename)
    return await asyncio.to_thread(_store_mask, files, data, shown, width, height)


def _store_mask(files: FileRoots, data: bytes, shown: str, width: int, height: int) -> str:
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_INIT_PIXELS:
                    raise UserFacingError(f"{shown} is over {MAX_INIT_PIXELS} pixels.")
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image) or image
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    image = Image.alpha_composite(black, rgba)
                gray = image.convert("L")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning):
        raise UserFacingError(f"{shown} is not usable as a mask: not a readable image.") from None
    if gray.size != (width, height):
        gray = cover(gray, width, height)
    if gray.getextrema()[1] < 128:
        raise UserFacingError(
            f"`mask`: {shown} is all black: nothing to repaint (paint white where to repaint)."
        )
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    png = buffer.getvalue()
    path = files.source_path(hashlib.sha256(png).hexdigest())
    if not path.is_file():
        atomic_write_bytes(path, png)
    return str(path)
