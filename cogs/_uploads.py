"""Checks of /train's input before anything is downloaded: the set of images, the trigger word."""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from cogs._attachments import attachment_problem, shown_name, upload_suffix
from cogs._checks import UserFacingError
from cogs._ui import clip

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


def check_uploads(
    attachments: list[discord.Attachment], *, max_mb: float, min_images: int
) -> tuple[list[Upload], list[str]]:
    """Sort the attachments by type and size before any download: (usable, reasons left out)."""
    problems: list[str] = []
    uploads: list[Upload] = []
    for attachment in attachments:
        problem = attachment_problem(attachment, max_mb)
        suffix = upload_suffix(attachment)
        if problem is None and suffix is not None:
            uploads.append(Upload(attachment, suffix))
        else:
            problems.append(f"{shown_name(attachment.filename)}: {problem}")
    if len(uploads) < min_images:
        head = (
            f"Training needs at least {min_images} usable images; "
            f"{len(uploads)} of the {count_of(len(attachments), 'file')} attached "
            f"{'is a usable image' if len(uploads) == 1 else 'are usable images'}."
        )
        raise UserFacingError(with_reasons(head, problems))
    return uploads, problems


def count_of(n: int, word: str) -> str:
    """'1 image', '3 images'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def with_reasons(head: str, reasons: list[str]) -> str:
    """A message head followed by one bullet per reason (at most MAX_IMAGES), clipped."""
    if not reasons:
        return head
    lines = "\n".join(f"• {r}" for r in reasons[:MAX_IMAGES])
    return clip(f"{head}\n{lines}", 1900)
