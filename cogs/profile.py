"""/seed and /settings: a member's fixed seed and personal generation defaults (all ephemeral)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import UserFacingError
from cogs._imagine_options import pick_size, sampler_autocomplete, size_autocomplete, sizes
from cogs._models import check_model_name, model_autocomplete
from cogs._ui import clip, info_embed
from engine.config import MAX_CFG, MAX_STEPS, MIN_CFG, MIN_STEPS
from engine.requests import MAX_SEED, GenerationRequest
from engine.schedulers import SCHEDULER_NAMES, canonical_scheduler_name
from storage import UserProfile

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)


def size_name(bot: ImageBot, width: int, height: int) -> str:
    """The named size for a width and height, or 'W×H' when it has no name."""
    for name, (w, h) in sizes(bot).items():
        if (w, h) == (width, height):
            return f"{name} ({w}×{h})"
    return f"{width}×{height}"


def effective_settings(bot: ImageBot, profile: UserProfile) -> dict[str, Any]:
    """What /imagine would use for this user: personal defaults, else the bot's defaults."""
    resolved = bot.engine_door.prepare(
        GenerationRequest(
            prompt="settings",
            negative_prompt=profile.negative_prompt,
            num_inference_steps=profile.steps,
            guidance_scale=profile.cfg,
            width=profile.width,
            height=profile.height,
            scheduler=profile.sampler,
            seed=0,
        )
    )
    return {
        "steps": resolved.num_inference_steps,
        "cfg": resolved.guidance_scale,
        "size": size_name(bot, resolved.width, resolved.height),
        "sampler": resolved.scheduler,
        "negative": resolved.negative_prompt,
    }


def settings_embed(bot: ImageBot, profile: UserProfile, title: str) -> discord.Embed:
    """An embed of the user's settings, marking which are personal and which are defaults."""
    values = effective_settings(bot, profile)
    personal = {
        "steps": profile.steps is not None,
        "cfg": profile.cfg is not None,
        "size": profile.width is not None or profile.height is not None,
        "sampler": profile.sampler is not None,
        "negative": profile.negative_prompt is not None,
    }
    embed = info_embed(title, "Values marked *default* follow the bot's defaults.")
    labels = {"steps": "Steps", "cfg": "CFG", "size": "Size", "sampler": "Sampler"}
    for key, label in labels.items():
        value = values[key]
        text = f"{value:g}" if isinstance(value, float) else str(value)
        embed.add_field(name=label, value=text + ("" if personal[key] else " *default*"))
    negative = values["negative"] or "(none)"
    embed.add_field(
        name="Negative prompt",
        value=clip(negative) + ("" if personal["negative"] else " *default*"),
        inline=False,
    )
    seed = "random" if profile.fixed_seed is None else f"`{profile.fixed_seed}` (fixed)"
    embed.add_field(name="Seed", value=seed)
    if profile.lora_name:
        embed.add_field(name="LoRA", value=f"{profile.lora_name} ({profile.lora_scale or 1:g})")
    model = profile.model or "the channel's or server's"
    embed.add_field(name="Model", value=model + ("" if profile.model else " *default*"))
    return embed


class Profile(commands.Cog):
    """Per-member seeds and generation defaults."""

    seed = app_commands.Group(name="seed", description="Your seed: fixed or random")
    settings = app_commands.Group(name="settings", description="Your default image settings")

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    # ----- /seed -------------------------------------------------------------------------
    @seed.command(name="set", description="Use the same seed for all your images")
    @app_commands.describe(value="The seed (a whole number)")
    async def seed_set(
        self, interaction: discord.Interaction, value: app_commands.Range[int, 0, MAX_SEED]
    ) -> None:
        """Fix the caller's seed."""
        if not 0 <= value <= MAX_SEED:
            raise UserFacingError(f"The seed must be a whole number from 0 to {MAX_SEED}.")
        await self.bot.storage.users.set_fixed_seed(interaction.user.id, value)
        await interaction.response.send_message(
            f"Your seed is now fixed at `{value}`: every `/imagine` uses it until `/seed random`.",
            ephemeral=True,
        )

    @seed.command(name="random", description="Use a new random seed for each image")
    async def seed_random(self, interaction: discord.Interaction) -> None:
        """Clear the caller's fixed seed."""
        await self.bot.storage.users.clear_fixed_seed(interaction.user.id)
        await interaction.response.send_message(
            "Your seed is random again: each `/imagine` picks a new one.", ephemeral=True
        )

    @seed.command(name="show", description="Your fixed seed and the seeds of your last images")
    async def seed_show(self, interaction: discord.Interaction) -> None:
        """Show the fixed seed and the last generation's seeds."""
        user_id = interaction.user.id
        profile = await self.bot.storage.users.get_or_create_user(user_id)
        last = await self.bot.storage.generations.last_generation_for_user(user_id)
        if profile.fixed_seed is None:
            lines = ["Your seed: random (a new one for each `/imagine`)."]
        else:
            lines = [f"Your seed is fixed at `{profile.fixed_seed}`."]
        if last is not None:
            seeds = ", ".join(f"`{s}`" for s in last.seeds)
            lines.append(f"Your last images used the seeds {seeds}.")
        elif profile.last_seed is not None:
            lines.append(f"Your last image used the seed `{profile.last_seed}`.")
        else:
            lines.append("You have not made any images yet.")
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    # ----- /settings ---------------------------------------------------------------------
    @settings.command(name="show", description="Your default image settings")
    async def settings_show(self, interaction: discord.Interaction) -> None:
        """Show the settings /imagine uses for the caller."""
        profile = await self.bot.storage.users.get_or_create_user(interaction.user.id)
        embed = settings_embed(self.bot, profile, "Your settings")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @settings.command(name="set", description="Change your default image settings")
    @app_commands.describe(
        steps=f"Denoising steps ({MIN_STEPS}-{MAX_STEPS})",
        cfg=f"How closely to follow the prompt ({MIN_CFG:g}-{MAX_CFG:g})",
        size="Image size: a name from the list, or width x height like 512x768",
        sampler="Sampler (scheduler)",
        negative="What to avoid in every image",
        model="Base model for your images (from the server's list)",
    )
    @app_commands.autocomplete(
        sampler=sampler_autocomplete, size=size_autocomplete, model=model_autocomplete
    )
    async def settings_set(
        self,
        interaction: discord.Interaction,
        steps: app_commands.Range[int, MIN_STEPS, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, MIN_CFG, MAX_CFG] | None = None,
        size: str | None = None,
        sampler: str | None = None,
        negative: app_commands.Range[str, 0, 1000] | None = None,
        model: str | None = None,
    ) -> None:
        """Validate and save the given defaults."""
        changes: dict[str, Any] = {}
        if steps is not None:
            if not MIN_STEPS <= steps <= MAX_STEPS:
                raise UserFacingError(f"Steps must be from {MIN_STEPS} to {MAX_STEPS}.")
            changes["steps"] = steps
        if cfg is not None:
            if not MIN_CFG <= cfg <= MAX_CFG:
                raise UserFacingError(f"CFG must be from {MIN_CFG:g} to {MAX_CFG:g}.")
            changes["cfg"] = float(cfg)
        if size is not None:
            changes["width"], changes["height"] = pick_size(size, sizes(self.bot))
        if sampler is not None:
            try:
                changes["sampler"] = canonical_scheduler_name(sampler)
            except ValueError:
                raise UserFacingError(
                    f"Unknown sampler `{sampler}`; choose one of: {', '.join(SCHEDULER_NAMES)}."
                ) from None
        if negative is not None:
            if len(negative) > 1000:
                raise UserFacingError("The negative prompt may have at most 1000 characters.")
            changes["negative_prompt"] = negative.strip()
        if model is not None:
            changes["model"] = check_model_name(self.bot, model)
        if not changes:
            raise UserFacingError("Give at least one setting to change (steps, cfg, size, ...).")
        profile = await self.bot.storage.users.update_defaults(interaction.user.id, **changes)
        embed = settings_embed(self.bot, profile, "Saved; your settings are now")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @settings.command(name="reset", description="Go back to the bot's default settings")
    async def settings_reset(self, interaction: discord.Interaction) -> None:
        """Forget the caller's personal defaults (seed and LoRA are kept)."""
        profile = await self.bot.storage.users.reset_defaults(interaction.user.id)
        embed = settings_embed(self.bot, profile, "Reset; your settings are now")
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Profile(bot))
