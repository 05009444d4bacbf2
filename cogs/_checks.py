"""Permission checks shared by the cogs: admins, bans, blocked words, cooldowns."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands

if TYPE_CHECKING:
    from bot import ImageBot


class UserFacingError(app_commands.AppCommandError):
    """An error whose message is shown to the user as is (ephemeral)."""


def is_admin(bot: ImageBot, user: discord.abc.User) -> bool:
    """Manage Server permission, or listed in BOT_ADMIN_USER_IDS / BOT_ADMIN_ROLE_IDS."""
    if user.id in bot.bot_settings.admin_user_ids:
        return True
    if isinstance(user, discord.Member):
        if user.guild_permissions.manage_guild:
            return True
        wanted = set(bot.bot_settings.admin_role_ids)
        if wanted and any(role.id in wanted for role in user.roles):
            return True
    return False


def admin_only():
    """An app-command check that refuses non-admins with a plain message."""

    async def predicate(interaction: discord.Interaction) -> bool:
        if not is_admin(interaction.client, interaction.user):  # type: ignore[arg-type]
            raise UserFacingError("Only server admins can use this command.")
        return True

    return app_commands.check(predicate)


async def training_running(bot: ImageBot) -> bool:
    """Whether a LoRA training is running now (it shares the engine's pipeline)."""
    jobs = await bot.storage.unfinished_jobs()
    return any(job.kind == "train" and job.status == "running" for job in jobs)


async def ensure_not_banned(bot: ImageBot, user_id: int) -> None:
    """Raise UserFacingError for a banned user."""
    profile = await bot.storage.users.get_user(user_id)
    if profile is not None and profile.banned:
        raise UserFacingError("You are banned from using this bot on this server.")


async def ensure_prompt_allowed(bot: ImageBot, *texts: str | None) -> None:
    """Raise UserFacingError when a prompt holds a blocked word."""
    for text in texts:
        if not text:
            continue
        found = await bot.storage.blocked_words.find_blocked_words(text)
        if found:
            raise UserFacingError(
                f"Your prompt contains a blocked word ({', '.join(sorted(found))}); "
                "please rephrase it."
            )


def prompt_is_nsfw(words: list[str], *texts: str | None) -> bool:
    """Whether any NSFW word appears as a whole word in the texts."""
    joined = " ".join(t for t in texts if t).lower()
    return any(re.search(rf"\b{re.escape(w)}\b", joined) for w in words)


class Cooldowns:
    """Per-user cooldown bookkeeping for /imagine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[int, float] = {}

    def remaining(self, user_id: int) -> float:
        """Seconds the user still has to wait (0 when free to go)."""
        last = self._last.get(user_id)
        if last is None:
            return 0.0
        return max(0.0, self.seconds - (time.monotonic() - last))

    def mark(self, user_id: int) -> None:
        """Start the user's cooldown now."""
        self._last[user_id] = time.monotonic()
