"""An /imagine attachment as an img2img source: checked, fitted to size, saved once by content."""

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
