"""/imagine attachments: an img2img source (checked, fitted to size) and its mask, saved once by
content."""

from __future__ import annotations

import asyncio

import discord

from cogs._attachments import check_attachment, read_attachment, shown_name
from cogs._checks import UserFacingError
from storage.files import FileRoots
from storage.sources import ImageRefused, store_mask, store_source


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
    try:
        return await asyncio.to_thread(store_source, files, data, shown, width, height, exact)
    except ImageRefused as exc:
        raise UserFacingError(str(exc)) from None


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
    try:
        return await asyncio.to_thread(store_mask, files, data, shown, width, height)
    except ImageRefused as exc:
        raise UserFacingError(str(exc)) from None
