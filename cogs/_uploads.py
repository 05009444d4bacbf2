"""Checks of /train's input before anything is downloaded: attachments and the trigger word."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import discord

from cogs._checks import UserFacingError
from cogs._ui import clip

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
MAX_IMAGES = 10
# Letters or digits of any script, '_' and '-': no spaces, no Discord markup, no mentions.
_TRIGGER_RE = re.compile(r"^[^\W_][\w-]{0,39}$")


@dataclass(frozen=True)
class Upload:
    """One accepted attachment and the file suffix it is stored under."""

    attachment: discord.Attachment
    suffix: str


def check_trigger_word(text: str) -> str:
    """The trigger word if it is one word of letters, digits, '_' or '-'; else UserFacingError."""
    word = text.strip()
    if not _TRIGGER_RE.match(word):
        raise UserFacingError(
            f"The trigger word {clip(discord.utils.escape_markdown(word), 60)!s} is not usable: "
            "use one word (up to 40 letters, digits, '_' or '-'), no spaces or symbols, "
            "for example `zxqstyle`."
        )
    return word


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


def check_uploads(
    attachments: list[discord.Attachment], *, max_mb: float, min_images: int
) -> tuple[list[Upload], list[str]]:
    """Sort the attachments by type and size before any download: (usable, reasons left out)."""
    problems: list[str] = []
    uploads: list[Upload] = []
    limit = int(max_mb * 1024 * 1024)
    for attachment in attachments:
        shown = shown_name(attachment.filename)
        suffix = upload_suffix(attachment)
        if suffix is None:
            problems.append(f"{shown}: not a PNG, JPEG, WebP, BMP or GIF image")
        elif attachment.size > limit:
            problems.append(f"{shown}: {attachment.size / 1048576:.1f} MB, over {max_mb:g} MB")
        else:
            uploads.append(Upload(attachment, suffix))
    if len(uploads) < min_images:
        head = (
            f"Training needs at least {min_images} usable images; "
            f"{count_of(len(uploads), 'usable image')} attached."
        )
        raise UserFacingError(with_reasons(head, problems))
    return uploads, problems


def count_of(n: int, word: str) -> str:
    """'1 image', '3 images'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def shown_name(filename: str) -> str:
    """A user's file name, clipped and in code quotes (backticks replaced)."""
    plain = filename.replace("`", "'")
    return f"`{clip(plain, 80)}`"


def with_reasons(head: str, reasons: list[str]) -> str:
    """A message head followed by one bullet per reason (at most MAX_IMAGES), clipped."""
    if not reasons:
        return head
    lines = "\n".join(f"• {r}" for r in reasons[:MAX_IMAGES])
    return clip(f"{head}\n{lines}", 1900)
