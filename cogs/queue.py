"""/queue and /cancel: what waits and runs, and taking your own jobs back."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs._ui import clip, format_eta, info_embed
from scheduling.jobs import JobRecord

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)

MAX_LISTED = 10


def job_summary(job: JobRecord) -> str:
    """A short description of a job: its id, owner and what it makes."""
    if job.kind == "train":
        name = job.train.name or "?"
        what = f"training LoRA `{name}`"
    else:
        request = job.request
        count = request.num_images or 1
        prompt = clip(request.prompt.replace("\n", " "), 60)
        what = f"{count} image{'s' if count != 1 else ''}: “{prompt}”"
    return f"job {job.id} · {owner(job)} · {what}"


def owner(job: JobRecord) -> str:
    """Who asked for a job: a member's mention, or the web API credential that sent it."""
    api_user = job.reference.get("api")
    return f"API client `{api_user}`" if api_user else f"<@{job.user_id}>"


class Queue(commands.Cog):
    """Shows the queue and cancels a member's jobs."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="What is waiting, where your jobs are")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Show the running job, the waiting jobs, and the caller's positions with ETAs."""
        executor = self.bot.executor
        snapshot = executor.snapshot()
        waiting, paused = snapshot.waiting, snapshot.paused
        title = "Queue (paused by an admin)" if paused else "Queue"
        embed = info_embed(title)
        lines = [
            job_summary(run.job) + (f" — step {run.step}/{run.total}" if run.total else "")
            for run in snapshot.running
        ]
        embed.add_field(
            name="Running now", value=clip("\n".join(lines)) if lines else "nothing", inline=False
        )
        if waiting:
            lines = [
                f"{index}. {job_summary(job)}"
                for index, job in enumerate(waiting[:MAX_LISTED], start=1)
            ]
            if len(waiting) > MAX_LISTED:
                lines.append(f"… and {len(waiting) - MAX_LISTED} more")
            embed.add_field(
                name=f"Waiting ({len(waiting)})", value=clip("\n".join(lines)), inline=False
            )
        else:
            embed.add_field(name="Waiting", value="nobody is waiting", inline=False)
        mine = []
        user_id = interaction.user.id
        for run in snapshot.running:
            if run.job.user_id == user_id:
                mine.append(f"job {run.job.id}: running now")
        for job in (job for job in waiting if job.user_id == user_id):
            position = executor.position(job.id)
            eta = (
                "waits until an admin resumes the queue"
                if paused
                else format_eta(executor.eta(job.id))
            )
            mine.append(f"job {job.id}: position {position}, {eta}")
        embed.add_field(
            name="Your jobs",
            value=clip("\n".join(mine)) if mine else "none — `/imagine` to make something",
            inline=False,
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your waiting and running jobs")
    async def cancel(self, interaction: discord.Interaction) -> None:
        """Remove the caller's waiting jobs and stop the running one; say which."""
        executor = self.bot.executor
        user_id = interaction.user.id
        snapshot = executor.snapshot()
        removed: list[int] = []
        for job in snapshot.waiting:
            if job.user_id == user_id and await executor.cancel(job.id) == "queued":
                removed.append(job.id)
        stopping: list[int] = []
        for run in snapshot.running:
            if run.job.user_id == user_id and await executor.cancel(run.job.id) == "running":
                stopping.append(run.job.id)
        if not removed and not stopping:
            text = "You have no jobs waiting or running."
        else:
            parts = []
            if removed:
                ids = ", ".join(str(i) for i in removed)
                parts.append(f"Removed from the queue: job{'s' if len(removed) > 1 else ''} {ids}.")
            for job_id in stopping:
                parts.append(f"Job {job_id} is running and stops at its next step.")
            text = " ".join(parts)
        log.info("user %s cancelled waiting %s, running %s", user_id, removed, stopping)
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Queue(bot))
