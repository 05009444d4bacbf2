"""/imagine: the command and its job buttons; requests, views and messages live beside it."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from botcore.acks import recorded_defer
from botcore.progress import token_fresh
from cogs._attachments import check_attachment
from cogs._checks import (
    Cooldowns,
    UserFacingError,
    ensure_not_banned,
    ensure_prompt_allowed,
    is_admin,
)
from cogs._imagine_messages import final_update, status_update
from cogs._imagine_options import sampler_autocomplete, size_autocomplete
from cogs._imagine_request import build_request, draft_upscale_note, from_image, submit_for
from cogs._job_views import DELETED, JobButton
from cogs._sources import save_mask, save_source
from engine.config import MAX_CFG, MAX_NUM_IMAGES, MAX_STEPS, MIN_CFG, MIN_STEPS
from engine.init_image import DEFAULT_STRENGTH
from engine.requests import MAX_SEED, random_seed
from scheduling.events import JobEvent
from scheduling.jobs import JobRecord

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)

# The follow-ups of a repainted result: keep more of the source, or repaint more of it.
SUBTLE_STRENGTH, STRONG_STRENGTH = 0.35, 0.7


async def can_manage_job(bot: ImageBot, interaction: discord.Interaction, job_id: int) -> JobRecord:
    """The job, if the clicking user made it or is an admin; else a plain refusal."""
    job = await bot.storage.get_job(job_id)
    if job is None:
        raise UserFacingError("That job no longer exists.")
    if job.user_id != interaction.user.id and not is_admin(bot, interaction.user):
        raise UserFacingError(
            "Only the person who asked for these images (or an admin) can do that."
        )
    return job


async def delete_result_message(bot: ImageBot, job: JobRecord) -> None:
    """Remove the channel message that shows a job's images, where it is known (best effort)."""
    ref = job.reference
    channel_id = ref.get("channel_id") or job.channel_id
    # Where botcore/outbox.py put the result: a message of its own, the original response, or
    # the status message it edited.
    message_id = ref.get("result_message_id")
    if not message_id and not (token_fresh(ref) and not ref.get("original_gone")):
        message_id = None if ref.get("status_gone") else ref.get("message_id")
    try:
        if message_id and channel_id and not ref.get("dm"):
            channel = bot.get_partial_messageable(int(channel_id))
            await channel.get_partial_message(int(message_id)).delete()
        elif not message_id and token_fresh(ref) and not ref.get("original_gone"):
            webhook = discord.Webhook.partial(int(ref["app_id"]), ref["token"], client=bot)
            await webhook.delete_message("@original")  # type: ignore[arg-type]
    except discord.HTTPException as exc:  # gone already, or not ours to remove
        log.info("could not remove the message of deleted job %s: %s", job.id, exc)


class Imagine(commands.Cog):
    """Text-to-image generation for everyone on the server."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.messenger = bot.messenger
        self.cooldowns = Cooldowns(bot.bot_settings.cooldown_s)

    async def cog_load(self) -> None:
        """Register the restart-safe buttons and the final message of generation jobs."""
        self.bot.add_dynamic_items(JobButton)
        self.bot.outbox.register("generate", functools.partial(final_update, self.bot))

    async def cog_unload(self) -> None:
        """Unregister the buttons."""
        self.bot.remove_dynamic_items(JobButton)

    @app_commands.command(name="imagine", description="Generate images from a text prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid",
        steps="Denoising steps (more = slower, finer)",
        cfg=f"How closely to follow the prompt ({MIN_CFG}-{MAX_CFG})",
        seed="Seed for reproducible images",
        size="Image size: a name from the list, or width x height like 512x768",
        count="Number of images",
        sampler="Sampler (scheduler)",
        draft="Draft: a quick, rougher image (4 steps); U and V on it give full quality",
        image="Start from this picture (img2img)",
        strength="With an image: how much is repainted (0.05-1; default 0.6, 1 with a mask)",
        mask="With an image: repaint only the white part of this picture (black = keep)",
    )
    @app_commands.autocomplete(sampler=sampler_autocomplete, size=size_autocomplete)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        negative: app_commands.Range[str, 0, 1000] | None = None,
        steps: app_commands.Range[int, MIN_STEPS, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, MIN_CFG, MAX_CFG] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        size: str | None = None,
        count: app_commands.Range[int, 1, MAX_NUM_IMAGES] | None = None,
        sampler: str | None = None,
        draft: bool | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
        mask: discord.Attachment | None = None,
    ) -> None:
        """Queue a generation and report its progress by editing the reply."""
        bot = self.bot
        user = interaction.user
        await ensure_not_banned(bot, user.id)
        await ensure_prompt_allowed(bot, prompt, negative)
        self.check_cooldown(user)
        request = await build_request(
            bot, user.id, prompt, negative=negative, steps=steps, cfg=cfg, seed=seed,
            size=size, count=count, sampler=sampler, draft=draft,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id,
        )  # fmt: skip
        if strength is not None and image is None:
            raise UserFacingError("`strength` only applies with an `image` to start from.")
        if mask is not None and image is None:
            raise UserFacingError(
                "`mask` only applies with an `image`: attach the picture to repaint as `image` "
                "and the mask (white = repaint) as `mask`."
            )
        if image is None:
            await submit_for(bot, interaction, request)
            self.cooldowns.mark(user.id)
            return
        max_mb = bot.bot_settings.max_attachment_mb
        check_attachment(image, max_mb)  # type and size refused before anything is acknowledged
        if mask is not None:
            check_attachment(mask, max_mb)
        native_w, native_h = bot.engine_door.native_size()
        width, height = request["width"] or native_w, request["height"] or native_h
        # Downloading may take longer than Discord's 3 s for a first answer: defer first, with
        # a record, so a crash before the job is written is answered at the next start.
        async with recorded_defer(bot.storage, interaction) as ack:
            path, fit_w, fit_h = await save_source(
                bot.storage.files, image, int(width), int(height), max_mb, exact=size is not None
            )
            request.update(
                init_image=path, width=fit_w, height=fit_h,
                strength=strength if strength is not None else DEFAULT_STRENGTH,
            )  # fmt: skip
            if mask is not None:  # a region job: the engine keeps the source's size, strength 1
                mask_path = await save_mask(bot.storage.files, mask, fit_w, fit_h, max_mb)
                request.update(mask_image=mask_path, width=None, height=None, strength=strength)
            await submit_for(bot, interaction, request, deferred=True)
            await ack.forget()
        self.cooldowns.mark(user.id)

    def check_cooldown(self, user: discord.abc.User) -> None:
        """Refuse a member who made images less than BOT_COOLDOWN_S ago (admins are exempt)."""
        wait = self.cooldowns.remaining(user.id)
        if wait > 0 and not is_admin(self.bot, user):
            raise UserFacingError(f"Slow down: you can make new images again in {wait:.0f} s.")

    # ----- buttons -----------------------------------------------------------------------
    async def on_button(
        self, interaction: discord.Interaction, action: str, job_id: int, index: int = 0
    ) -> None:
        """Handle a click on one of the job buttons."""
        bot = self.bot
        if action == "cancel":
            await can_manage_job(bot, interaction, job_id)
            outcome = await bot.executor.cancel(job_id)
            text = {
                "queued": "Removed from the queue.",
                "running": "Stopping at the next step…",
                None: "That job has already finished.",
            }[outcome]
            await interaction.response.send_message(text, ephemeral=True)
            return
        if action == "del":
            await self.delete(interaction, await can_manage_job(bot, interaction, job_id))
            return
        if action == "edit":  # the Region / Zoom / Pan panel (cogs/repaint.py)
            await bot.get_cog("Repaint").open_panel(interaction, job_id)  # type: ignore[union-attr]
            return
        job = await bot.storage.get_job(job_id)
        if job is None or job.kind != "generate":
            raise UserFacingError("That job no longer exists.")
        generation = await bot.storage.generations.get_generation_by_job(job_id)
        if generation is not None and generation.deleted_at is not None:
            raise UserFacingError(DELETED)
        seeds = list(generation.seeds) if generation else [job.request.seed or 0]
        if action == "seed":
            profile = await bot.storage.users.set_fixed_seed(interaction.user.id, seeds[0])
            await interaction.response.send_message(
                f"Your fixed seed is now `{profile.fixed_seed}`; `/seed random` undoes it.",
                ephemeral=True,
            )
            return
        await ensure_not_banned(bot, interaction.user.id)
        # Every button below queues new images: the same cooldown as /imagine.
        self.check_cooldown(interaction.user)
        request = job.request.to_dict()
        if action in ("up", "vary"):
            note = draft_upscale_note(index) if action == "up" and request.get("draft") else None
            await submit_for(
                bot, interaction, from_image(request, generation, seeds, action, index), note=note
            )
            self.cooldowns.mark(interaction.user.id)
            return
        if action in ("subtle", "strong"):
            source = request.get("init_image")
            if not source or not Path(source).is_file():
                raise UserFacingError("The picture this was made from is no longer on the disk.")
            request.update(
                strength=SUBTLE_STRENGTH if action == "subtle" else STRONG_STRENGTH,
                seed=random_seed(),
                upscale=None,
            )
        elif action == "reroll":
            request["seed"] = random_seed()
        else:  # variations: the same prompt with the seeds right after these
            request["seed"] = (max(seeds) + 1) % (MAX_SEED + 1)
        await submit_for(bot, interaction, request)
        self.cooldowns.mark(interaction.user.id)

    async def delete(self, interaction: discord.Interaction, job: JobRecord) -> None:
        """Delete a job's images for good (out of /history, files removed) and their message."""
        bot = self.bot
        await bot.storage.delete_generation(job.id)
        message = interaction.message
        if message is not None and message.flags.ephemeral:
            # A /history Open is ephemeral: not in the channel, so only the interaction's
            # webhook can remove it (a deferred update makes it the "original" response).
            await interaction.response.defer()
            await interaction.delete_original_response()
            await delete_result_message(bot, job)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = "Deleted: the images are gone from `/history` and from the bot's disk."
        if message is not None:
            try:
                await message.delete()
            except discord.NotFound:
                text = "That message was already deleted."
        await interaction.followup.send(text, ephemeral=True)

    # ----- job events --------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_job_event(self, event: JobEvent) -> None:
        """Show a generation job's state in its message."""
        job = event.job
        if job.kind != "generate" or not (job.reference.get("token") or job.channel_id):
            return
        update = status_update(event)
        if update is not None:
            await self.messenger.update(job, update)


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Imagine(bot))
