"""The whole bot (real discord.py, real SQLite, tiny model) against the fake Discord."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot import ImageBot, build
from botcore.settings import BotSettings, DiscordSettings
from storage import StorageSettings
from tests.conftest import tiny_config
from tests.fake_discord import (
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeUser,
    InteractionRecord,
    RecordedEvent,
)
from webapi.settings import ApiSettings


@dataclass
class World:
    """The fake server and the people in it."""

    fake: FakeDiscord
    guild: FakeGuild
    general: FakeChannel
    nsfw: FakeChannel
    alice: FakeUser
    bob: FakeUser
    admin: FakeUser
    tmp: Path
    bot: ImageBot | None = None

    async def slash(
        self,
        user: FakeUser,
        command: str,
        options: dict[str, Any] | None = None,
        channel: FakeChannel | None = None,
    ):
        """Send a slash command and return its InteractionRecord."""
        return await self.fake.send_slash(user, channel or self.general, command, options or {})


def make_world(fake: FakeDiscord, tmp: Path) -> World:
    """A guild with a general and an NSFW channel, two members and an admin."""
    guild = fake.add_guild("Art Club")
    general = guild.add_channel("general")
    nsfw = guild.add_channel("after-dark", nsfw=True)
    alice, bob, admin = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("admin")
    guild.add_member(alice)
    guild.add_member(bob)
    guild.add_member(admin, manage_guild=True)
    return World(fake, guild, general, nsfw, alice, bob, admin, tmp)


async def start_bot(
    world: World,
    model_dir: Path,
    *,
    generation: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
    workers: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    api: ApiSettings | None = None,
    **bot_settings: Any,
) -> ImageBot:
    """Build the real bot with settings pointing at the temp folder and the fake server."""
    settings = {"cooldown_s": 0, "train_data_dir": world.tmp / "train"}
    settings.update(bot_settings)
    gen = {"num_inference_steps": 3}
    gen.update(generation or {})
    config = tiny_config(model_dir, **gen)
    config.queue = config.queue.model_copy(update={"progress_interval_s": 0.2, **(queue or {})})
    if workers:
        config.workers = config.workers.model_copy(update=workers)
    return await build(
        config,
        BotSettings(**settings),
        DiscordSettings(token=SecretStr(world.fake.token), dev_guild_id=world.guild.id),
        StorageSettings(
            **{
                "db_path": world.tmp / "bot.sqlite3",
                "outputs_dir": world.tmp / "outputs",
                "lora_dir": world.tmp / "loras",
                "embedding_dir": world.tmp / "embeddings",
                **(storage or {}),
            }
        ),
        api,
        guild_ready_timeout=0.05,
    )


@contextlib.asynccontextmanager
async def running(world: World, model_dir: Path, **kwargs: Any) -> AsyncIterator[ImageBot]:
    """Run the bot against the fake until the block ends, then close it and its database."""
    bot = await start_bot(world, model_dir, **kwargs)
    world.bot = bot
    try:
        with world.fake.patch_discord():
            async with world.fake.running(bot):
                yield bot
    finally:
        await bot.storage.close()


async def answer(it: InteractionRecord, timeout: float = 30) -> RecordedEvent:
    """The bot's answer: the message callback, or the first followup after a deferral."""
    callback = await it.wait_callback(timeout)
    if callback.type == 5:
        return await it.wait_followup(timeout)
    return callback


def ephemeral(event: RecordedEvent) -> bool:
    """Whether a reply is only visible to the person who asked."""
    return bool((event.data.get("flags") or 0) & 64)


def text_of(event: RecordedEvent) -> str:
    """The content and embeds of a reply as one string."""
    return f"{event.data.get('content') or ''} {event.data.get('embeds') or ''}"


def is_result(event: RecordedEvent) -> bool:
    """Whether an event is the edit of @original that carries the finished images."""
    return (
        event.kind == "edit_original"
        and bool(event.files)
        and not event.files[0].filename.startswith("preview")
    )


async def wait_result(record: InteractionRecord, timeout: float = 90) -> RecordedEvent:
    """Wait for the finished images of an /imagine (or button) interaction."""
    return await record.wait_for(is_result, timeout=timeout)
