"""Which base model a request runs on (user > channel > server default), and what fits it."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from cogs._checks import UserFacingError
from cogs.errors import never_failing
from engine.model_choices import family_name
from engine.region import REGION_FIELDS

if TYPE_CHECKING:
    from bot import ImageBot
    from storage.loras import LoraRecord

log = logging.getLogger(__name__)


def server_key(guild_id: int | None) -> str:
    """The settings key of a server's default model (set by /admin model)."""
    return f"model_default:{guild_id or 0}"


def channel_key(channel_id: int) -> str:
    """The settings key of a channel's default model (set by /admin model … scope:channel)."""
    return f"model_channel:{channel_id}"


def check_model_name(bot: ImageBot, name: str) -> str:
    """The canonical name of an allowed model; UserFacingError listing the choices otherwise."""
    found = bot.engine_door.find_model(name)
    if found is None:
        names = ", ".join(f"`{n}`" for n in bot.engine_door.model_names())
        raise UserFacingError(f"Unknown model `{name}`; choose one of: {names}.")
    return found


async def server_model(bot: ImageBot, guild_id: int | None) -> str:
    """The server's default model: what /admin model set, else MODEL_ID."""
    door = bot.engine_door
    stored = await bot.storage.kv.get(server_key(guild_id))
    found = door.find_model(stored) if stored else None
    return found if found is not None else door.default_model


async def pick_model(
    bot: ImageBot, user_model: str | None, guild_id: int | None, channel_id: int | None
) -> str:
    """The model of a new job: the user's /settings choice, the channel's, else the server's.

    A stored name that MODEL_CHOICES no longer lists is skipped (the next level applies).
    """
    candidates = [user_model]
    if channel_id is not None:
        candidates.append(await bot.storage.kv.get(channel_key(channel_id)))
    for name in filter(None, candidates):
        found = bot.engine_door.find_model(name)
        if found is not None:
            return found
        log.info("model %r is no longer in MODEL_CHOICES; using the next default", name)
    return await server_model(bot, guild_id)


async def region_model(bot: ImageBot, user_id: int, request: dict[str, Any]) -> dict[str, Any]:
    """A region job's request moved onto its model's 9-channel inpainting partner, if listed.

    A model the user picked in /settings is honoured as it is; the channel's and server's
    defaults, and the model a repainted picture was made with, give way to the partner.
    """
    model = request.get("model")
    if not model or not any(request.get(name) for name in REGION_FIELDS):
        return request
    door = bot.engine_door
    partner = door.inpaint_partner(model)
    if partner is None:
        return request
    profile = await bot.storage.users.get_user(user_id)
    picked = profile.model if profile is not None else None
    if picked and door.find_model(picked) == door.find_model(model):
        return request
    return {**request, "model": partner}


def lora_width(bot: ImageBot, record: LoraRecord) -> int | None:
    """The text-encoder width a LoRA was made for (recorded, else that of its base model)."""
    if record.base_width:
        return record.base_width
    door = bot.engine_door
    if record.base_model and door.find_model(record.base_model) is not None:
        return door.model_width(record.base_model)
    return None


def _mismatch(bot: ImageBot, what: str, base: str | None, width: int | None, model: str) -> None:
    wanted = bot.engine_door.model_width(model)
    if width is None or wanted is None or width == wanted:
        return
    made_for = f"{base} ({family_name(width)})" if base else family_name(width)
    raise UserFacingError(
        f"The {what} was made for {made_for}, but this image would run on `{model}` "
        f"({family_name(wanted)}); choose a model of its kind in `/settings` or leave it out."
    )


def check_lora_fits(bot: ImageBot, record: LoraRecord, model: str) -> None:
    """UserFacingError when the LoRA's base model has another architecture than `model`."""
    _mismatch(bot, f"LoRA `{record.name}`", record.base_model, lora_width(bot, record), model)


async def check_embeddings_fit(bot: ImageBot, model: str, *texts: str | None) -> None:
    """UserFacingError when a prompt names an embedding made for another architecture."""
    words = " ".join(t for t in texts if t)
    if not words:
        return
    for record in await bot.storage.embeddings.list():
        if re.search(rf"(?<![\w.-]){re.escape(record.name)}(?![\w.-])", words, re.IGNORECASE):
            _mismatch(bot, f"embedding `{record.name}`", record.base_model, record.width, model)


@never_failing
async def model_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Allowed model names containing what the user typed."""
    bot: ImageBot = interaction.client  # type: ignore[assignment]
    return [
        app_commands.Choice(name=name, value=name)
        for name in bot.engine_door.model_names()
        if current.lower() in name.lower()
    ][:25]
