"""What a generation job's message says: queued, progress, notices, and the finished images."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from botcore.progress import Update
from cogs._checks import prompt_is_nsfw
from cogs._job_views import cancel_view, result_view
from cogs._ui import png_file, progress_line, queued_line, result_embed, saved_png_file
from scheduling.events import JobEvent, Notice, Progress, Queued, Started
from scheduling.jobs import JobRecord

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)


def status_update(event: JobEvent) -> Update | None:
    """The message of a job that waits or runs (with its Cancel button); None: no change."""
    job = event.job
    if isinstance(event, Queued):
        return Update(content=queued_line(event.position, event.eta_s), view=cancel_view(job.id))
    if isinstance(event, Started):
        return Update(content="🎨 Starting…", view=cancel_view(job.id))
    if isinstance(event, Progress):
        files = []
        if event.preview is not None:  # the engine attaches one only with QUEUE_PREVIEWS
            files = [png_file(event.preview, "preview.png")]
        line = progress_line(event.step, event.total, event.eta_s)
        return Update(content=line, files=files, view=cancel_view(job.id))
    if isinstance(event, Notice):
        return Update(content=f"⚠️ {event.message}", view=cancel_view(job.id))
    return None


async def final_update(bot: ImageBot, job: JobRecord, data: dict[str, Any] | None) -> Update:
    """The last message of a generation job, built from its stored record (outbox builder)."""
    data = data or {}
    if job.status == "failed":
        message = data.get("message") or "This job failed; the error was logged."
        return Update(content=f"❌ {message}", view=discord.ui.View())
    if job.status == "cancelled":
        text = (
            f"🚫 Cancelled after step {data.get('step', 0)}."
            if data.get("was_running")
            else "🚫 Cancelled — removed from the queue."
        )
        return Update(content=text, view=discord.ui.View())
    return await _result_update(bot, job, data)


async def _result_update(bot: ImageBot, job: JobRecord, data: dict[str, Any]) -> Update:
    settings = bot.bot_settings
    request = job.request.to_dict()
    flagged = any(data.get("nsfw", [])) or prompt_is_nsfw(
        settings.nsfw_words, request.get("prompt"), request.get("negative_prompt")
    )
    nsfw_channel = bool(job.reference.get("nsfw_channel"))
    hide = flagged and not nsfw_channel and settings.nsfw_mode != "allow"
    content = f"<@{job.user_id}>"
    if request.get("draft"):
        content += "\n📝 Draft: a quick, rougher image. U and V on it give full quality."
    if job.reference.get("note"):
        content += f"\nℹ️ {job.reference['note']}"
    for warning in data.get("warnings", []):
        content += f"\nℹ️ {warning[:300]}"
    files: list[discord.File] = []
    if hide and settings.nsfw_mode == "withhold":
        content += " these images were flagged as NSFW and are only shown in NSFW channels."
    else:
        # The PNGs saved on the engine thread (with their parameters), read off the loop.
        for index, path in enumerate(data.get("paths", [])):
            try:
                png = await asyncio.to_thread(Path(path).read_bytes)
            except OSError:
                log.warning("job %s: image %s is missing", job.id, path)
                content += f"\nℹ️ Image {index + 1} is missing on the bot's disk."
                continue
            files.append(saved_png_file(png, f"job{job.id}-{index}.png", spoiler=hide))
    view = result_view(job.id, request, count=len(data.get("paths", [])))
    return Update(
        content=content, embed=result_embed(job, data), files=files, view=view, notify=True
    )
