"""/imagine: the queue, live progress, and the buttons on results (restart-safe)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs._acks import recorded_defer
from cogs._checks import (
    Cooldowns,
    UserFacingError,
    ensure_not_banned,
    ensure_prompt_allowed,
    is_admin,
    prompt_is_nsfw,
)
from cogs._delivery import Update, interaction_reference
from cogs._inline_loras import inline_lora_entries
from cogs._models import check_embeddings_fit, check_lora_fits, pick_model
from cogs._sources import check_source, save_source
from cogs._ui import (
    png_file,
    progress_line,
    queued_line,
    result_embed,
    saved_png_file,
    size_choices,
)
from cogs.errors import never_failing
from engine.config import MAX_CFG, MAX_NUM_IMAGES, MAX_STEPS, MIN_CFG, MIN_STEPS
from engine.init_image import DEFAULT_STRENGTH, MAX_SIDE, UPSCALE_STRENGTH
from engine.requests import MAX_SEED, random_seed
from engine.schedulers import SCHEDULER_NAMES
from scheduling.events import JobEvent, Notice, Progress, Queued, Started
from scheduling.jobs import JobRecord

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)

# The follow-ups of a repainted result: keep more of the source, or repaint more of it.
SUBTLE_STRENGTH, STRONG_STRENGTH = 0.35, 0.7

MAX_IMAGES_BY_PRESET = {"2gb": 2, "3gb": 2, "4gb": 4}


def max_images(bot: ImageBot) -> int:
    """How many images one request may ask for on this machine's VRAM preset."""
    return MAX_IMAGES_BY_PRESET.get(bot.generator.preset, 8)


def sizes(bot: ImageBot) -> dict[str, tuple[int, int]]:
    """Size choices for /imagine and /settings on this model and preset."""
    gen = bot.generator
    width = gen.model_defaults.get("width", bot.config.generation.width)
    height = gen.model_defaults.get("height", bot.config.generation.height)
    if "width" in bot.config.generation.model_fields_set:
        width, height = bot.config.generation.width, bot.config.generation.height
    return size_choices(int(width), int(height), gen.preset)


async def build_request(bot: ImageBot, user_id: int, prompt: str, **options: Any) -> dict[str, Any]:
    """A request dict from the options given, filled from the user's saved defaults.

    Options `guild_id` and `channel_id` choose the model: the user's, the channel's, the server's.
    """
    profile = await bot.storage.users.get_or_create_user(user_id)
    model = await pick_model(bot, profile.model, options.get("guild_id"), options.get("channel_id"))
    size = options.get("size")
    width = height = None
    if size:
        choices = sizes(bot)
        if size not in choices:
            raise UserFacingError(f"Unknown size {size!r}; choose one of: {', '.join(choices)}.")
        width, height = choices[size]
    count = options.get("count")
    if count is not None and count > max_images(bot):
        raise UserFacingError(f"At most {max_images(bot)} images per request on this machine.")
    fast = bool(options.get("fast"))
    # Fast mode brings its own steps, CFG and sampler; saved defaults for normal mode don't apply.
    saved_steps, saved_cfg = (None, None) if fast else (profile.steps, profile.cfg)
    request: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": options.get("negative") or profile.negative_prompt,
        "num_inference_steps": options["steps"]
        if options.get("steps") is not None
        else saved_steps,
        "guidance_scale": options.get("cfg") if options.get("cfg") is not None else saved_cfg,
        "seed": options.get("seed") if options.get("seed") is not None else profile.fixed_seed,
        "width": width or profile.width,
        "height": height or profile.height,
        "num_images": count,
        "scheduler": options.get("sampler") or profile.sampler,
        "fast": fast,
        "model": model,
    }
    await check_embeddings_fit(bot, model, prompt, request["negative_prompt"])
    if profile.lora_name:
        lora = await bot.storage.loras.get_lora(profile.lora_name)
        if lora is None or lora.status != "ready":
            await bot.storage.users.clear_active_lora(user_id)
            raise UserFacingError(
                f"Your LoRA {profile.lora_name!r} is no longer available; it has been switched off."
            )
        check_lora_fits(bot, lora, model)
        request.update(
            lora=lora.path,
            lora_name=lora.name,
            lora_scale=1.0 if profile.lora_scale is None else profile.lora_scale,
        )
    request["loras"] = await inline_lora_entries(bot, user_id, prompt, model)
    return request


async def submit_for(
    bot: ImageBot,
    interaction: discord.Interaction,
    request: dict[str, Any],
    *,
    deferred: bool = False,
) -> JobRecord:
    """Validate, write the job, acknowledge the interaction, then let the job start.

    The job is written before Discord is told anything, so no acknowledged command can exist
    without a record (a crash in between leaves a job that runs and posts in the channel).
    ``deferred``: the caller already deferred under a recorded acknowledgement (cogs/_acks.py).
    """
    executor = bot.executor
    user = interaction.user
    admin = is_admin(bot, user)
    try:
        bot.generator.prepare(_as_request(request))  # refuse bad values before deferring
    except ValueError as exc:
        raise UserFacingError(f"Invalid request: {exc}") from None
    if not admin:
        executor.check_caps(user.id)

    async def acknowledge(job: JobRecord) -> None:
        await interaction.response.defer(thinking=True)

    return await executor.submit(
        user_id=user.id,
        payload={"request": request},
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        reference=interaction_reference(interaction),
        admin=admin,
        acknowledge=None if deferred else acknowledge,
    )


def _as_request(data: dict[str, Any]):
    from engine.requests import GenerationRequest

    return GenerationRequest.from_dict(data)


def from_image(
    request: dict[str, Any], generation: Any, seeds: list[int], action: str, index: int
) -> dict[str, Any]:
    """The request of U<i> (upscale ×2, same seed) or V<i> (img2img, new seed) on image i."""
    paths = list(generation.image_paths) if generation is not None else []
    if not 0 <= index < len(paths) or not Path(paths[index]).is_file():
        raise UserFacingError(f"Image {index + 1} of that job is no longer on the bot's disk.")
    new = {**request, "init_image": paths[index], "upscale": None}
    if action == "up":
        if not _can_upscale(request):
            raise UserFacingError(f"That image is already as large as allowed ({MAX_SIDE} px).")
        new.update(
            upscale=2.0, strength=UPSCALE_STRENGTH, num_images=1, width=None, height=None,
            seed=seeds[index] if index < len(seeds) else None,
        )  # fmt: skip
    else:
        new.update(strength=DEFAULT_STRENGTH, seed=random_seed())
    return new


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


class _JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"sd:(?P<action>[a-z]+):(?P<job>[0-9]+)(?::(?P<index>[0-9]))?",
):
    """Every job button; the custom id carries the action, the job id and the image index
    (U/V buttons), so it survives restarts."""

    LABELS = {
        "cancel": ("Cancel", discord.ButtonStyle.danger, "✖️"),
        "reroll": ("Reroll", discord.ButtonStyle.primary, "🎲"),
        "var": ("Next seeds", discord.ButtonStyle.secondary, "⏭️"),  # id kept for old messages
        "seed": ("Reuse seed", discord.ButtonStyle.secondary, "🌱"),
        "del": ("Delete", discord.ButtonStyle.secondary, "🗑️"),
        "up": ("U", discord.ButtonStyle.secondary, None),
        "vary": ("V", discord.ButtonStyle.secondary, None),
        "subtle": ("Subtle", discord.ButtonStyle.secondary, "🪶"),
        "strong": ("Strong", discord.ButtonStyle.secondary, "💥"),
    }
    PER_IMAGE = ("up", "vary")

    def __init__(self, action: str, job_id: int, index: int | None = None, row: int | None = None):
        label, style, emoji = self.LABELS[action]
        custom_id = f"sd:{action}:{job_id}"
        if action in self.PER_IMAGE:
            label, custom_id = f"{label}{(index or 0) + 1}", f"{custom_id}:{index or 0}"
        super().__init__(
            discord.ui.Button(label=label, style=style, emoji=emoji, custom_id=custom_id, row=row)
        )
        self.action = action
        self.job_id = job_id
        self.index = index or 0

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> _JobButton:
        """Rebuild the button from its custom id (also after a restart)."""
        action = match["action"]
        if action not in cls.LABELS or (action in cls.PER_IMAGE) != (match["index"] is not None):
            raise UserFacingError("This button is not known any more.")
        return cls(action, int(match["job"]), int(match["index"] or 0))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Dispatch to the cog's handler for this action."""
        from cogs.errors import handle_interaction_error

        cog = interaction.client.get_cog("Imagine")  # type: ignore[union-attr]
        try:
            await cog.on_button(interaction, self.action, self.job_id, self.index)
        except Exception as exc:
            await handle_interaction_error(interaction, exc)


def cancel_view(job_id: int) -> discord.ui.View:
    """The view shown while a job waits or runs."""
    view = discord.ui.View(timeout=None)
    view.add_item(_JobButton("cancel", job_id))
    return view


def result_view(
    job_id: int,
    count: int = 0,
    upscaled: bool = False,
    can_upscale: bool = True,
    repainted: bool = False,
):
    """The view under finished images: U1..Un and V1..Vn rows, then the job's own buttons.

    At most 5 rows of 5 buttons: 8 images take two rows of U and two of V. An upscaled
    image gets V1 (and U1 while another ×2 fits), and Delete. A repainted result (img2img or
    a variation) also gets Subtle / Strong: the same source again at a lower or higher strength,
    when a row is free for them.
    """
    view = discord.ui.View(timeout=None)
    row = 0
    for action in ("up", "vary"):
        if action == "up" and not can_upscale:
            continue
        for start in range(0, count, 5):
            for index in range(start, min(count, start + 5)):
                view.add_item(_JobButton(action, job_id, index, row=row))
            row += 1
    if repainted and not upscaled and row <= 3:
        for action in ("subtle", "strong"):
            view.add_item(_JobButton(action, job_id, row=row))
        row += 1
    for action in ("del",) if upscaled else ("reroll", "var", "seed", "del"):
        view.add_item(_JobButton(action, job_id, row=min(row, 4)))
    return view


def _can_upscale(request: dict[str, Any]) -> bool:
    """Whether another ×2 of this job's images stays within the size limit."""
    return max(request.get("width") or 512, request.get("height") or 512) * 2 <= MAX_SIDE


@never_failing
async def sampler_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Sampler names containing what the user typed."""
    return [
        app_commands.Choice(name=n, value=n)
        for n in SCHEDULER_NAMES
        if current.lower() in n.lower()
    ][:25]


@never_failing
async def size_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Size names (with their pixels) containing what the user typed."""
    choices = sizes(interaction.client)  # type: ignore[arg-type]
    return [
        app_commands.Choice(name=f"{name} ({w}×{h})", value=name)
        for name, (w, h) in choices.items()
        if current.lower() in name
    ][:25]


class Imagine(commands.Cog):
    """Text-to-image generation for everyone on the server."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.messenger = bot.messenger
        self.cooldowns = Cooldowns(bot.bot_settings.cooldown_s)

    async def cog_load(self) -> None:
        """Register the restart-safe buttons and the final message of generation jobs."""
        self.bot.add_dynamic_items(_JobButton)
        self.bot.outbox.register("generate", self.final_update)

    async def cog_unload(self) -> None:
        """Unregister the buttons."""
        self.bot.remove_dynamic_items(_JobButton)

    @app_commands.command(name="imagine", description="Generate images from a text prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid",
        steps="Denoising steps (more = slower, finer)",
        cfg=f"How closely to follow the prompt ({MIN_CFG}-{MAX_CFG})",
        seed="Seed for reproducible images",
        size="Image size",
        count="Number of images",
        sampler="Sampler (scheduler)",
        fast="Fast mode: LCM, 4-8 steps (negative prompts have little effect)",
        image="Start from this picture (img2img)",
        strength="With an image: how much is repainted (0.05-1, default 0.6)",
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
        fast: bool | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
    ) -> None:
        """Queue a generation and report its progress by editing the reply."""
        bot = self.bot
        user = interaction.user
        await ensure_not_banned(bot, user.id)
        await ensure_prompt_allowed(bot, prompt, negative)
        wait = self.cooldowns.remaining(user.id)
        if wait > 0 and not is_admin(bot, user):
            raise UserFacingError(f"Slow down: you can use /imagine again in {wait:.0f} s.")
        request = await build_request(
            bot, user.id, prompt, negative=negative, steps=steps, cfg=cfg, seed=seed,
            size=size, count=count, sampler=sampler, fast=fast,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id,
        )  # fmt: skip
        if strength is not None and image is None:
            raise UserFacingError("`strength` only applies with an `image` to start from.")
        if image is None:
            await submit_for(bot, interaction, request)
            self.cooldowns.mark(user.id)
            return
        max_mb = bot.bot_settings.max_attachment_mb
        check_source(image, max_mb)  # type and size refused before anything is acknowledged
        native_w, native_h = sizes(bot)["square"]  # model defaults or the settings
        width, height = request["width"] or native_w, request["height"] or native_h
        # Downloading may take longer than Discord's 3 s for a first answer: defer first, with
        # a record, so a crash before the job is written is answered at the next start.
        async with recorded_defer(bot, interaction) as ack:
            path, fit_w, fit_h = await save_source(
                bot.storage.files, image, int(width), int(height), max_mb
            )
            request.update(
                init_image=path, width=fit_w, height=fit_h,
                strength=strength if strength is not None else DEFAULT_STRENGTH,
            )  # fmt: skip
            await submit_for(bot, interaction, request, deferred=True)
            await ack.forget()
        self.cooldowns.mark(user.id)

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
            await can_manage_job(bot, interaction, job_id)
            message = interaction.message
            if message is not None and message.flags.ephemeral:
                # A /history Open is ephemeral: not in the channel, so only the interaction's
                # webhook can remove it (a deferred update makes it the "original" response).
                await interaction.response.defer()
                await interaction.delete_original_response()
                return
            await interaction.response.defer(ephemeral=True, thinking=True)
            text = "Deleted."
            if interaction.message is not None:
                try:
                    await interaction.message.delete()
                except discord.NotFound:
                    text = "That message was already deleted."
            await interaction.followup.send(text, ephemeral=True)
            return
        job = await bot.storage.get_job(job_id)
        if job is None or job.kind != "generate":
            raise UserFacingError("That job no longer exists.")
        generation = await bot.storage.generations.get_generation_by_job(job_id)
        seeds = list(generation.seeds) if generation else [job.payload["request"].get("seed", 0)]
        if action == "seed":
            profile = await bot.storage.users.set_fixed_seed(interaction.user.id, seeds[0])
            await interaction.response.send_message(
                f"Your fixed seed is now `{profile.fixed_seed}`; `/seed random` undoes it.",
                ephemeral=True,
            )
            return
        await ensure_not_banned(bot, interaction.user.id)
        request = dict(job.payload["request"])
        if action in ("up", "vary"):
            await submit_for(
                bot, interaction, from_image(request, generation, seeds, action, index)
            )
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

    # ----- job events --------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_job_event(self, event: JobEvent) -> None:
        """Show a generation job's state in its message."""
        job = event.job
        if job.kind != "generate" or not (job.reference.get("token") or job.channel_id):
            return
        if isinstance(event, Queued):
            await self.messenger.update(
                job,
                Update(content=queued_line(event.position, event.eta_s), view=cancel_view(job.id)),
            )
        elif isinstance(event, Started):
            await self.messenger.update(
                job, Update(content="🎨 Starting…", view=cancel_view(job.id))
            )
        elif isinstance(event, Progress):
            files = []
            if event.preview is not None and self.bot.bot_settings.progress_previews:
                files = [png_file(event.preview, "preview.png")]
            line = progress_line(event.step, event.total, event.eta_s)
            await self.messenger.update(
                job, Update(content=line, files=files, view=cancel_view(job.id))
            )
        elif isinstance(event, Notice):
            await self.messenger.update(
                job, Update(content=f"⚠️ {event.message}", view=cancel_view(job.id))
            )

    async def final_update(self, job: JobRecord, data: dict[str, Any] | None) -> Update:
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
        return await self._result_update(job, data)

    async def _result_update(self, job: JobRecord, data: dict[str, Any]) -> Update:
        settings = self.bot.bot_settings
        request = job.payload.get("request", {})
        flagged = any(data.get("nsfw", [])) or prompt_is_nsfw(
            settings.nsfw_words, request.get("prompt"), request.get("negative_prompt")
        )
        nsfw_channel = bool(job.reference.get("nsfw_channel"))
        hide = flagged and not nsfw_channel and settings.nsfw_mode != "allow"
        content = f"<@{job.user_id}>"
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
        view = result_view(
            job.id,
            count=len(data.get("paths", [])),
            upscaled=request.get("upscale") is not None,
            can_upscale=_can_upscale(request),
            repainted=bool(request.get("init_image")),
        )
        return Update(
            content=content, embed=result_embed(job, data), files=files, view=view, notify=True
        )


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Imagine(bot))
