"""What a training's messages say: queued, progress, and the outcome with its before/after."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import discord

from botcore.progress import Update
from cogs._train_setup import MAX_CONTENT, caption_lines, proof_seed
from cogs._ui import COLOR_OK, clip, progress_line
from cogs._uploads import count_of, with_reasons
from engine.training.config import TrainConfig
from scheduling.events import JobEvent, Progress, Queued, Started
from scheduling.jobs import JobRecord
from storage import safe_name


def train_name(job: JobRecord) -> str:
    """The LoRA name a train job produces."""
    return job.train.name or "?"


def status_line(event: JobEvent, name: str) -> str | None:
    """The message of a training that waits or runs; None: no change."""
    if isinstance(event, Queued):
        where = "next in line" if event.position <= 1 else f"position {event.position} in the queue"
        return f"🕐 Training of `{name}` is queued — {where}."
    if isinstance(event, Started):
        return f"🧠 Training `{name}`: loading the images and the model…"
    if isinstance(event, Progress):
        line = progress_line(event.step, event.total, event.eta_s, what=f"Training `{name}`")
        if event.loss is not None:
            line += f" · loss {event.loss:.4f}"
        return line
    return None


def ended_update(job: JobRecord, name: str, data: dict[str, Any]) -> Update:
    """The last message of a training that failed or was cancelled."""
    if job.status == "failed":
        message = data.get("message") or "the error was logged."
        text = f"❌ Training of `{name}` failed: {message} The checkpoints saved so far are kept."
        return Update(content=clip(text, 1900), view=discord.ui.View())
    text = (
        f"🚫 Training of `{name}` cancelled after step {data.get('step', 0)}."
        if data.get("was_running")
        else f"🚫 Training of `{name}` cancelled before it started."
    )
    outcome = data.get("lora")
    if outcome == "checkpoint":
        total = f" (of {data['max_steps']})" if data.get("max_steps") else ""
        text += (
            f" LoRA `{name}` is usable from its checkpoint at step "
            f"{data.get('checkpoint_step', '?')}{total}: `/lora use {name}`. To train it again "
            f"under this name, `/lora delete {name}` first."
        )
    elif outcome == "freed":
        text += (
            f" No checkpoint was saved, so nothing is kept: the name `{name}` is free to "
            "train again."
        )
    return Update(content=text, view=discord.ui.View())


def finished_update(
    job: JobRecord, name: str, data: dict[str, Any], proof: tuple[str, bytes] | None
) -> Update:
    """The last message of a finished training: how to use the LoRA, its before/after picture.

    ``proof`` is the sample prompt and its before/after PNG (None: the trainer's sample image,
    if any).
    """
    trigger = data.get("trigger_word") or job.train.trigger_word or ""
    content = (
        f"<@{job.user_id}> ✅ LoRA `{name}` is ready. Try it with `/lora use {name}` "
        f"and put `{trigger}` in your prompt."
    )
    embed = discord.Embed(title=f"LoRA {name}", color=COLOR_OK)
    embed.add_field(name="Trigger word", value=f"`{trigger}`")
    embed.add_field(name="Steps", value=str(data.get("steps", "?")))
    embed.add_field(name="Rank", value=str(data.get("rank", "?")))
    if data.get("sha256"):
        embed.add_field(name="sha256", value=f"`{str(data['sha256'])[:16]}…`", inline=False)
    files: list[discord.File] = []
    sample = data.get("sample_path")
    if proof is not None:
        prompt, png = proof
        filename = f"{safe_name(name)}-before-after.png"
        shown = clip(prompt.replace("`", "'"), 300)
        content += (
            f"\nLeft: without the LoRA · right: with it — `{shown}`, seed {proof_seed(job.train)}."
        )
        files.append(discord.File(io.BytesIO(png), filename=filename))
        embed.set_image(url=f"attachment://{filename}")
    elif sample and Path(sample).is_file():
        buffer = io.BytesIO(Path(sample).read_bytes())
        files.append(discord.File(buffer, filename=f"{safe_name(name)}-sample.png"))
        embed.set_image(url=f"attachment://{safe_name(name)}-sample.png")
    embed.set_footer(text=f"job {job.id}")
    return Update(content=content, embed=embed, files=files, view=discord.ui.View())


def queued_text(
    job: JobRecord, config: TrainConfig, captions: list[str], reasons: list[str]
) -> str:
    """The reply to /train once queued: the settings, the captions used, the images left out."""
    text = (
        f"✅ Training of `{config.name}` is queued (job {job.id}): "
        f"{count_of(len(captions), 'image')}, {config.max_steps} steps, rank {config.rank}, "
        f"learning rate {config.lr:g}, trigger word `{config.trigger_word}`. "
        "Progress is posted in this channel; /imagine keeps working meanwhile."
    )
    if reasons:
        text = with_reasons(text + "\nLeft out:", reasons)
    head = "\nCaptions:\n"
    budget = MAX_CONTENT - len(text) - len(head)
    if budget > 40:
        text += head + caption_lines(captions, budget)
    return clip(text, MAX_CONTENT)
