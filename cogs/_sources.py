"""An /imagine attachment as an img2img source: checked, fitted to size, saved once by content."""

from __future__ import annotations

import asyncio
import hashlib
import io

import discord

from cogs._checks import UserFacingError
from cogs._uploads import shown_name, upload_suffix
from engine.init_image import MAX_INIT_PIXELS, fit_size
from storage.files import FileRoots, atomic_write_bytes


def check_source(attachment: discord.Attachment, max_mb: float) -> None:
    """Refuse an attachment by its type and size, before anything is downloaded."""
    shown = shown_name(attachment.filename)
    if upload_suffix(attachment) is None:
        raise UserFacingError(f"{shown} is not a PNG, JPEG, WebP, BMP or GIF image.")
    if attachment.size > max_mb * 1024 * 1024:
        raise UserFacingError(
            f"{shown} is {attachment.size / 1048576:.1f} MB, over the {max_mb:g} MB limit."
        )


async def save_source(
    files: FileRoots, attachment: discord.Attachment, width: int, height: int, max_mb: float
) -> tuple[str, int, int]:
    """Check and fit an attachment to width×height pixels; return (stored path, width, height)."""
    shown = shown_name(attachment.filename)
    check_source(attachment, max_mb)
    try:
        data = await attachment.read()
    except discord.HTTPException:
        raise UserFacingError(f"Could not download {shown}; please try again.") from None
    return await asyncio.to_thread(_store, files, data, shown, width, height)


def _store(
    files: FileRoots, data: bytes, shown: str, width: int, height: int
) -> tuple[str, int, int]:
    from engine.prepare_dataset import ImageRejected, load_image

    try:
        image = load_image(io.BytesIO(data), max_pixels=MAX_INIT_PIXELS)  # type: ignore[arg-type]
    except ImageRejected as exc:
        raise UserFacingError(f"{shown} is not usable as an image: {exc}.") from None
    size = fit_size(image.width, image.height, width, height)
    if image.size != size:
        from PIL import Image

        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png = buffer.getvalue()
    path = files.source_path(hashlib.sha256(png).hexdigest())
    if not path.is_file():  # the same picture is stored once
        atomic_write_bytes(path, png)
    return str(path), size[0], size[1]
