"""/admin: pause and resume the queue, ban members, block words, and see how the bot is doing."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import UserFacingError, admin_only, is_admin
from cogs._models import channel_key, check_model_name, model_autocomplete, server_key
from cogs._ui import clip, info_embed

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)


class Admin(commands.Cog):
    """Server-admin controls; every command refuses non-admins with a plain message."""

    # Listed only to members with Manage Server (server admins can change who sees it under
    # Integrations); every subcommand still checks, since listing is not permission.
    group = app_commands.Group(
        name="admin",
        description="Bot controls for server admins",
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        """Apply a pause that was set before the last restart."""
        if await self.bot.storage.kv.is_queue_paused():
            self.bot.executor.pause()
            log.info("the queue stays paused (an admin paused it before the restart)")

    async def _reply(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(text, ephemeral=True)

    # ----- the queue ---------------------------------------------------------------------
    @group.command(name="pause", description="Stop starting new jobs (the running one finishes)")
    @admin_only()
    async def pause(self, interaction: discord.Interaction) -> None:
        """Pause the queue; the flag survives restarts."""
        await self.bot.storage.kv.set_queue_paused(True)
        self.bot.executor.pause()
        log.info("queue paused by %s", interaction.user.id)
        waiting = len(self.bot.executor.snapshot().waiting)
        await self._reply(
            interaction,
            f"The queue is paused ({waiting} waiting); new requests are still accepted. "
            "`/admin resume` starts it again.",
        )

    @group.command(name="resume", description="Start serving the queue again")
    @admin_only()
    async def resume(self, interaction: discord.Interaction) -> None:
        """Resume the queue."""
        await self.bot.storage.kv.set_queue_paused(False)
        self.bot.executor.resume()
        log.info("queue resumed by %s", interaction.user.id)
        await self._reply(interaction, "The queue is running again.")

    # ----- members -----------------------------------------------------------------------
    @group.command(name="ban", description="Stop a member from using the bot")
    @app_commands.describe(user="Who to ban")
    @admin_only()
    async def ban(self, interaction: discord.Interaction, user: discord.User) -> None:
        """Ban a member and drop their waiting jobs."""
        bot = self.bot
        if user.id == interaction.user.id:
            raise UserFacingError("You cannot ban yourself.")
        if is_admin(bot, user):
            raise UserFacingError(f"{user.mention} is an admin and cannot be banned.")
        if user.bot:
            raise UserFacingError("Bots cannot be banned here.")
        await bot.storage.users.set_banned(user.id, True)
        dropped = 0
        for job in bot.executor.snapshot().waiting_for(user.id):
            if await bot.executor.cancel(job.id) == "queued":
                dropped += 1
        text = f"{user.mention} is banned from using the bot."
        if dropped:
            text += f" Their {dropped} waiting job{'s' if dropped > 1 else ''} were removed."
        await self._reply(interaction, text)

    @group.command(name="unban", description="Let a banned member use the bot again")
    @app_commands.describe(user="Who to unban")
    @admin_only()
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        """Lift a ban."""
        profile = await self.bot.storage.users.get_user(user.id)
        if profile is None or not profile.banned:
            raise UserFacingError(f"{user.mention} is not banned.")
        await self.bot.storage.users.set_banned(user.id, False)
        await self._reply(interaction, f"{user.mention} can use the bot again.")

    # ----- words -------------------------------------------------------------------------
    @group.command(name="block", description="Refuse prompts containing a word or phrase")
    @app_commands.describe(word="The word or phrase to block (whole words, any case)")
    @admin_only()
    async def block(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        """Add a blocked word."""
        if not word.strip():
            raise UserFacingError("Give a word or phrase to block.")
        added = await self.bot.storage.blocked_words.add_blocked_word(
            word, added_by=interaction.user.id
        )
        shown = " ".join(word.split()).lower()
        text = f"Blocked `{shown}`." if added else f"`{shown}` was already blocked."
        await self._reply(interaction, text)

    @group.command(name="unblock", description="Allow a blocked word or phrase again")
    @app_commands.describe(word="The word or phrase to allow again")
    @admin_only()
    async def unblock(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        """Remove a blocked word."""
        if not word.strip():
            raise UserFacingError("Give a word or phrase to unblock.")
        removed = await self.bot.storage.blocked_words.remove_blocked_word(word)
        shown = " ".join(word.split()).lower()
        text = f"`{shown}` is allowed again." if removed else f"`{shown}` was not blocked."
        await self._reply(interaction, text)

    @group.command(name="blocked", description="List the blocked words")
    @admin_only()
    async def blocked(self, interaction: discord.Interaction) -> None:
        """Show every blocked word."""
        words = await self.bot.storage.blocked_words.list_blocked_words()
        if not words:
            await self._reply(interaction, "No words are blocked.")
            return
        embed = info_embed(f"Blocked words ({len(words)})", clip(", ".join(words), 4000))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # ----- base models -------------------------------------------------------------------
    @group.command(name="model", description="Set the default base model of the server or channel")
    @app_commands.describe(
        name="A model from MODEL_CHOICES",
        scope="server (default): everywhere; channel: only images made in this channel",
    )
    @app_commands.autocomplete(name=model_autocomplete)
    @admin_only()
    async def model(
        self,
        interaction: discord.Interaction,
        name: str,
        scope: Literal["server", "channel"] = "server",
    ) -> None:
        """Store the default; jobs queued from now on use it (waiting ones keep their model)."""
        bot = self.bot
        name = check_model_name(bot, name)
        if scope == "channel":
            if interaction.channel_id is None:
                raise UserFacingError("Use this in the channel whose default you want to set.")
            await bot.storage.kv.set(channel_key(interaction.channel_id), name)
            where = "Images made in this channel now use"
        else:
            await bot.storage.kv.set(server_key(interaction.guild_id), name)
            where = "The server's default model is now"
        log.info("default model (%s) set to %s by %s", scope, name, interaction.user.id)
        waiting = len(bot.executor.snapshot().waiting)
        await self._reply(
            interaction,
            f"{where} **{name}**. Requests from now on use it; the {waiting} already waiting "
            "keep the model they were queued with, so no image is cut short. Members who picked "
            "a model in `/settings` keep theirs.",
        )

    # ----- numbers -----------------------------------------------------------------------
    @group.command(name="workers", description="The GPU workers: node, device, state, job, speed")
    @admin_only()
    async def workers(self, interaction: discord.Interaction) -> None:
        """One line per worker (the local engine thread, or each Ray actor)."""
        lines = []
        for info in self.bot.executor.workers_info():
            job = f"job {info.current_job}" if info.current_job is not None else "idle"
            speed = "-" if info.seconds_per_step is None else f"{info.seconds_per_step:.2f} s/step"
            lines.append(
                f"**{info.name}** on {info.node} · {info.device} ({info.preset}) · {info.state} · "
                f"{job} · {info.jobs_done} done · {speed}"
            )
        text = "\n".join(lines) or "No worker is alive; jobs wait until one comes back."
        embed = info_embed(f"Workers ({len(lines)})", clip(text, 4000))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @group.command(name="stats", description="Jobs served, speed, queue, model and device")
    @admin_only()
    async def stats(self, interaction: discord.Interaction) -> None:
        """Show how the bot is doing."""
        bot = self.bot
        executor = bot.executor
        totals = await bot.storage.generations.stats()
        stats = executor.stats()
        speed = stats.seconds_per_image or totals.avg_seconds_per_image
        embed = info_embed("Bot stats")
        embed.add_field(
            name="Jobs served", value=f"{totals.jobs_served} ({stats.served} since start)"
        )
        embed.add_field(name="Images made", value=str(totals.images))
        embed.add_field(name="Seconds per image", value="-" if speed is None else f"{speed:.2f} s")
        snapshot = executor.snapshot()
        state = "paused" if snapshot.paused else "running"
        embed.add_field(name="Queue", value=f"{len(snapshot.waiting)} waiting ({state})")
        embed.add_field(name="Engine", value=clip(engine_health(bot), 1024), inline=False)
        embed.add_field(name="Database", value=bot.storage.db.locks.summary(), inline=False)
        door = bot.engine_door
        embed.add_field(name="Model", value=door.resident_model or "?")
        embed.add_field(name="VRAM preset", value=door.preset)
        embed.add_field(name="Device", value=door.device)
        if bot.failed_extensions:
            embed.add_field(
                name="Cogs that failed to load",
                value=", ".join(bot.failed_extensions),
                inline=False,
            )
        await interaction.response.send_message(embed=embed, ephemeral=True)


def engine_health(bot: ImageBot) -> str:
    """Dispatcher state, the last error it survived, deliveries and free disk, one per line."""
    executor = bot.executor
    health = executor.health
    lines = [
        "dispatcher " + ("alive" if executor.dispatcher_alive else "**STOPPED** (restart the bot)")
    ]
    if health.last_error:
        ago = time.time() - (health.last_error_at or time.time())
        lines.append(
            f"{health.errors} error(s) survived; last {ago:.0f} s ago: {health.last_error}"
        )
    lines.append(f"{bot.outbox.pending} result(s) being delivered")
    folders = {
        "outputs": bot.storage.files.outputs_dir,
        "LoRAs": bot.storage.files.lora_dir,
        "embeddings": bot.storage.files.embedding_dir,
        "database": bot.storage.db.path.parent,
    }
    for label, folder in folders.items():
        lines.append(f"{label}: {free_disk(folder)} free")
    space = bot.storage.space
    lines += [f"**{space.words(disk)}: new work is refused**" for disk in space.low()]
    return "\n".join(lines)


def free_disk(folder: Path) -> str:
    """Free space of the disk holding ``folder`` (or its nearest existing parent), e.g. '12.3 GB'."""
    path = folder.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 1e9:.1f} GB"
    except OSError as exc:
        return f"unknown ({exc.strerror or exc})"


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Admin(bot))
