"""The one error handler for every interaction: commands, buttons and autocompletes.

Order: user-facing errors (our own checks, a full queue, the engine's refusals) and Discord's
check failures are shown as they are; cooldowns say how long to wait; bad values from the engine
(ValueError) are shown as the engine words them; a message or job that is gone gets a plain
line; anything else is logged with its traceback and the user gets a short note. Every answer is
ephemeral. An autocomplete that fails answers with no choices (it cannot show text).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import UserFacingError
from cogs._option_names import refusal
from engine.errors import EngineError, RequestError
from scheduling.disk import DiskFull
from scheduling.queue import QueueFullError
from storage.errors import DatabaseLockedError

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)
Choice = app_commands.Choice[str]
DATABASE_BUSY = (
    "The server's database is busy (another program has it open); nothing was saved — try "
    "again in a moment."
)


async def reply_ephemeral(interaction: discord.Interaction, message: str) -> None:
    """Answer an interaction ephemerally, whether or not it was already answered."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not send an error message: %s", exc)
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        log.warning("could not send an error message: %r", exc)


def describe(error: Exception) -> str | None:
    """The user-facing text for an error, or None when it is unexpected."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original  # type: ignore[assignment]
    if isinstance(error, (UserFacingError, QueueFullError, EngineError)):
        return str(error)
    if isinstance(error, DiskFull):  # a full disk, named (storage.DiskFullError)
        return str(error)
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You cannot use this command here."
    if isinstance(error, RequestError):
        return refusal(error)
    if isinstance(error, ValueError):
        return f"Invalid value: {error}"
    if isinstance(error, discord.NotFound):
        return "That message or job is gone (deleted or already finished)."
    if isinstance(error, DatabaseLockedError):  # past the answer budget (botcore/answer_budget.py)
        return DATABASE_BUSY
    return None


def never_failing(
    autocomplete: Callable[[discord.Interaction, str], Awaitable[list[Choice]]],
) -> Callable[[discord.Interaction, str], Awaitable[list[Choice]]]:
    """An autocomplete that answers with no choices instead of failing.

    discord.py logs a failed autocomplete and sends nothing, so the member sees "loading
    options failed"; this wrapper logs the error and answers with an empty list.
    """

    @functools.wraps(autocomplete)
    async def wrapper(interaction: discord.Interaction, current: str) -> list[Choice]:
        try:
            return await autocomplete(interaction, current)
        except Exception:
            log.exception("autocomplete %s failed", autocomplete.__name__)
            return []

    return wrapper


async def handle_interaction_error(interaction: discord.Interaction, error: Exception) -> None:
    """Answer any failed interaction (command, button, autocomplete); log only the unexpected."""
    original = getattr(error, "original", error)
    if interaction.type == discord.InteractionType.autocomplete:
        if not isinstance(original, (UserFacingError, ValueError)):
            log.exception("autocomplete failed", exc_info=error)
        if not interaction.response.is_done():
            try:
                await interaction.response.autocomplete([])
            except discord.HTTPException as exc:
                log.warning("could not answer an autocomplete: %s", exc)
        return
    message = describe(error)
    if message is None:
        command = interaction.command.qualified_name if interaction.command else None
        where = f"/{command}" if command else f"component {_custom_id(interaction)}"
        log.exception("unexpected error in %s", where, exc_info=error)
        message = "Something went wrong on our side; the error was logged."
    await reply_ephemeral(interaction, message)


def _custom_id(interaction: discord.Interaction) -> str:
    data = interaction.data or {}
    return str(data.get("custom_id", "?"))


class Errors(commands.Cog):
    """Installs the tree-wide error handler."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self._previous = bot.tree.on_error

    async def cog_load(self) -> None:
        """Route every app-command error through on_app_command_error."""
        self.bot.tree.on_error = self.on_app_command_error  # type: ignore[assignment]

    async def cog_unload(self) -> None:
        """Restore the previous handler."""
        self.bot.tree.on_error = self._previous  # type: ignore[assignment]

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Tell the user what went wrong in plain words; log the unexpected."""
        await handle_interaction_error(interaction, error)


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Errors(bot))
