"""The choices /imagine and /settings offer on this machine: sizes, image counts, samplers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from cogs._checks import UserFacingError
from cogs._ui import size_choices
from cogs.errors import never_failing
from engine.config import check_size
from engine.schedulers import SCHEDULER_NAMES

if TYPE_CHECKING:
    from bot import ImageBot

MAX_IMAGES_BY_PRESET = {"2gb": 2, "3gb": 2, "4gb": 4}


def max_images(bot: ImageBot) -> int:
    """How many images one request may ask for on this machine's VRAM preset."""
    return MAX_IMAGES_BY_PRESET.get(bot.engine_door.preset, 8)


def sizes(bot: ImageBot) -> dict[str, tuple[int, int]]:
    """Size choices for /imagine and /settings on this model and preset."""
    door = bot.engine_door
    return size_choices(*door.native_size(), door.preset)


_PIXELS = re.compile(r"^(\d{1,5})\s*[x×*]\s*(\d{1,5})$", re.IGNORECASE)


def pick_size(text: str, choices: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The width and height a size option means: a name (any case) or `WxH` within the limits."""
    wanted = " ".join(text.replace("_", " ").replace("-", " ").split()).casefold()
    for name, size in choices.items():
        if name.casefold() == wanted:
            return size
    named = ", ".join(f"{name} ({w}×{h})" for name, (w, h) in choices.items())
    match = _PIXELS.match(wanted)
    if match is None:
        raise UserFacingError(
            f"Unknown size `{discord.utils.escape_markdown(text[:40])}`: choose one of {named}, "
            "or write width x height in pixels, like `512x768`."
        )
    width, height = int(match[1]), int(match[2])
    try:
        check_size(width)
        check_size(height)
    except ValueError:
        raise UserFacingError(
            f"The size {width}×{height} is not possible: each side must be a multiple of 8 "
            "from 64 to 2048 pixels."
        ) from None
    return width, height


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
        if current.casefold() in name.casefold()
    ][:25]
