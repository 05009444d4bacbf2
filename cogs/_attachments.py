"""Checks of an attached picture, shared by /train and /imagine: its type, size and shown name."""

from __future__ import annotations

import logging
from pathlib import Path

import discord

from cogs._checks import UserFacingError
from cogs._ui import clip

log = logging.getLogger(__name__)

# Suffix we write for each accepted attachment type (by file extension and by content type).
SUFFIXES = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".webp": ".webp", ".bmp": ".bmp"}
SUFFIXES[".gif"] = ".gif"
CONTENT_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/x-ms-bmp": ".bmp",
    "image/gif": ".gif",
}
NOT_AN_IMAGE = "not a PNG, JPEG, WebP, BMP or GIF image"


def upload_suffix(attachment: discord.Attachment) -> str | None:
    """The suffix to store an attachment under, or None when it is not an accepted image type."""
    ext = Path(attachment.filename).suffix.lower()
    by_name = SUFFIXES.get(ext)
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type in CONTENT_TYPES:
        return CONTENT_TYPES[content_type]
    if content_type in ("", "application/octet-stream"):
        return by_name  # no usable type given: trust the extension (the bytes are checked later)
    return None


def shown_name(filename: str) -> str:
    """A user's file name, clipped and in code quotes (backticks replaced)."""
    plain = filename.replace("`", "'")
    return f"`{clip(plain, 80)}`"


def attachment_problem(attachment: discord.Attachment, max_mb: float) -> str | None:
    """Why an attachment is refused by its type or size (before any download), or None."""
    if upload_suffix(attachment) is None:
        return NOT_AN_IMAGE
    if attachment.size > max_mb * 1024 * 1024:
        return f"{attachment.size / 1048576:.1f} MB, over {max_mb:g} MB"
    return None


def check_attachment(attachment: discord.Attachment, max_mb: float) -> None:
    """Refuse one attachment by its type and size, before anything is downloaded."""
    problem = attachment_problem(attachment, max_mb)
    if problem is not None:
        raise UserFacingError(f"{shown_name(attachment.filename)} is {problem}.")


async def read_attachment(attachment: discord.Attachment, max_mb: float) -> bytes:
    """Download an attachment; a failed download or more bytes than allowed is a refusal."""
    shown = shown_name(attachment.filename)
    try:
        data = await attachment.read()
    except discord.HTTPException as exc:
        log.warning("could not download %s: %s", attachment.url, exc)
        raise UserFacingError(f"Could not download {shown}; please try again.") from None
    if len(data) > int(max_mb * 1024 * 1024):
        raise UserFacingError(f"{shown} is over {max_mb:g} MB.")
    return data
