"""What /imagine asks the engine for: a request from options and saved defaults, U/V follow-ups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from botcore.progress import interaction_reference
from cogs._checks import UserFacingError, is_admin
from cogs._imagine_options import max_images, pick_size, sizes
from cogs._inline_loras import inline_lora_entries
from cogs._models import check_embeddings_fit, check_lora_fits, pick_model, region_model
from cogs._option_names import refusal
from engine.init_image import DEFAULT_STRENGTH, MAX_SIDE, UPSCALE_STRENGTH
from engine.requests import GenerationRequest, random_seed
from scheduling.jobs import JobRecord, NewJob
from storage import UserProfile
from storage.errors import DatabaseLockedError

if TYPE_CHECKING:
    from bot import ImageBot

# Refused rather than deferred without a record: an acknowledged command must have its job
# written (a crash while deferred but unrecorded would lose it). See README, "database locked".
DATABASE_BUSY = (
    "The server's database is busy (another program has it open); nothing was queued — try "
    "again in a moment."
)


async def build_request(bot: ImageBot, user_id: int, prompt: str, **options: Any) -> dict[str, Any]:
    """A request dict from the options given, filled from the user's saved defaults.

    Options `guild_id` and `channel_id` choose the model: the user's, the channel's, the server's.
    """
    # A read: a new member's profile row is written with their first result, so a locked
    # database leaves the job's INSERT as the only write before the answer.
    profile = await bot.storage.users.get_user(user_id) or UserProfile(user_id)
    model = await pick_model(bot, profile.model, options.get("guild_id"), options.get("channel_id"))
    size = options.get("size")
    width = height = None
    if size:
        width, height = pick_size(size, sizes(bot))
    count = options.get("count")
    if count is not None and count > max_images(bot):
        raise UserFacingError(f"At most {max_images(bot)} images per request on this machine.")
    draft = options.get("draft")
    if draft is None:  # the server's default (GEN_DRAFT_DEFAULT), written into the job
        draft = bot.engine_door.draft_by_default(model)
    # A draft brings its own steps, CFG and sampler; the saved full-quality defaults don't apply.
    saved = (None, None, None) if draft else (profile.steps, profile.cfg, profile.negative_prompt)
    saved_steps, saved_cfg, saved_negative = saved
    request: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": options.get("negative") or saved_negative,
        "num_inference_steps": options["steps"]
        if options.get("steps") is not None
        else saved_steps,
        "guidance_scale": options.get("cfg") if options.get("cfg") is not None else saved_cfg,
        "seed": options.get("seed") if options.get("seed") is not None else profile.fixed_seed,
        "width": width or profile.width,
        "height": height or profile.height,
        "num_images": count,
        "scheduler": options.get("sampler") or profile.sampler,
        "draft": bool(draft),
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
    note: str | None = None,
) -> JobRecord:
    """Validate, write the job, acknowledge the interaction, then let the job start.

    The job is written before Discord is told anything, so no acknowledged command can exist
    without a record (a crash in between leaves a job that runs and posts in the channel).
    ``deferred``: the caller already deferred under a recorded acknowledgement (botcore/acks.py).
    ``note``: a line the result message shows (kept with the job's delivery reference).
    """
    executor = bot.executor
    user = interaction.user
    admin = is_admin(bot, user)
    request = await region_model(bot, user.id, request)
    try:
        bot.engine_door.prepare(
            GenerationRequest.from_dict(request)
        )  # refuse bad values before deferring
    except ValueError as exc:
        raise UserFacingError(refusal(exc)) from None
    if not admin:
        executor.check_caps(user.id)

    async def acknowledge(job: JobRecord) -> None:
        await interaction.response.defer(thinking=True)

    reference = interaction_reference(interaction)
    if note:
        reference["note"] = note
    new = NewJob(
        user_id=user.id,
        work=GenerationRequest.from_dict(request),
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        reference=reference,
    )
    try:
        return await executor.submit(
            new, admin=admin, acknowledge=None if deferred else acknowledge
        )
    except DatabaseLockedError:
        raise UserFacingError(DATABASE_BUSY) from None


def from_image(
    request: dict[str, Any], generation: Any, seeds: list[int], action: str, index: int
) -> dict[str, Any]:
    """The request of U<i> (upscale ×2, same seed) or V<i> (img2img, new seed) on image i.

    On a draft both give full quality: V repaints the draft image at full quality; U cannot
    render and enlarge in one job, so it is the full-quality render of image i's seed and
    prompt (see `draft_upscale_note`), which has U buttons of its own.
    """
    if request.get("draft"):
        request = full_quality(request)
        if action == "up":
            seed = seeds[index] if index < len(seeds) else request.get("seed")
            return {**request, "num_images": 1, "seed": seed}
    paths = list(generation.image_paths) if generation is not None else []
    if not 0 <= index < len(paths) or not Path(paths[index]).is_file():
        raise UserFacingError(f"Image {index + 1} of that job is no longer on the bot's disk.")
    # U and V work on the whole picture: a region job's mask or outpaint does not carry over.
    new = {**request, "init_image": paths[index], "upscale": None, **NO_REGION}
    if action == "up":
        if not can_upscale(request):
            raise UserFacingError(f"That image is already as large as allowed ({MAX_SIDE} px).")
        new.update(
            upscale=2.0, strength=UPSCALE_STRENGTH, num_images=1, width=None, height=None,
            seed=seeds[index] if index < len(seeds) else None,
        )  # fmt: skip
    else:
        new.update(strength=DEFAULT_STRENGTH, seed=random_seed())
    return new


NO_REGION = {"mask_image": None, "mask_region": None, "mask_blur": None, "outpaint": None}


def full_quality(request: dict[str, Any]) -> dict[str, Any]:
    """A draft's request at full quality: the draft's steps and CFG give way to the defaults."""
    return {**request, "draft": False, "num_inference_steps": None, "guidance_scale": None}


def draft_upscale_note(index: int) -> str:
    """What the result of U on a draft says it is."""
    return (
        f"Full-quality render of draft image {index + 1} (same seed and prompt). U on a draft "
        "renders it first; press U here to upscale it."
    )


def can_upscale(request: dict[str, Any]) -> bool:
    """Whether another ×2 of this job's images stays within the size limit."""
    return max(request.get("width") or 512, request.get("height") or 512) * 2 <= MAX_SIDE
