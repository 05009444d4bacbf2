"""/embedding: add and delete textual-inversion embeddings (admins), list them; loaded at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import UserFacingError, admin_only, training_running
from cogs._ui import clip
from cogs.errors import never_failing
from engine.embeddings import EmbeddingError, check_embedding_name
from storage import AlreadyExistsError, atomic_write_bytes

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)


@never_failing
async def _name_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot: ImageBot = interaction.client  # type: ignore[assignment]
    records = await bot.storage.embeddings.list()
    names = [r.name for r in records if current.lower() in r.name.lower()]
    return [app_commands.Choice(name=n, value=n) for n in names[:25]]


class Embedding(commands.Cog):
    """Textual-inversion embeddings, used by writing their name in a prompt or negative prompt."""

    group = app_commands.Group(name="embedding", description="Embeddings: words with learned looks")

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self._add_lock = asyncio.Lock()

    async def cog_load(self) -> None:
        """Load every registered embedding (before the engine takes its first job)."""
        bot = self.bot
        for record in await bot.storage.embeddings.list():
            try:
                await bot.engine_door.restore_embedding(Path(record.path), record.name)
            except (EmbeddingError, OSError) as exc:
                log.error("embedding %s not loaded: %s", record.name, exc)

    @group.command(name="add", description="Add a textual-inversion embedding (admins)")
    @app_commands.describe(
        file="An embedding .safetensors file for this bot's base model",
        name="The word that calls it up in prompts (letters, digits, _ - .)",
    )
    @admin_only()
    async def add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        name: app_commands.Range[str, 1, 64],
    ) -> None:
        """Check an uploaded embedding, store it, load it and register it."""
        bot = self.bot
        try:
            check_embedding_name(name)
        except EmbeddingError as exc:
            message = str(exc)
            raise UserFacingError(message[:1].upper() + message[1:] + ".") from None
        if not file.filename.lower().endswith(".safetensors"):
            raise UserFacingError(
                f"`{clip(file.filename, 80)}` is not a .safetensors file; "
                "only .safetensors embeddings are accepted."
            )
        limit_mb = bot.bot_settings.max_attachment_mb
        if file.size > limit_mb * 1024 * 1024:
            raise UserFacingError(
                f"`{clip(file.filename, 80)}` is {file.size / 1048576:.1f} MB; "
                f"the limit is {limit_mb:g} MB (BOT_MAX_ATTACHMENT_MB)."
            )
        if await bot.storage.embeddings.get(name) is not None:
            raise UserFacingError(f"An embedding named `{name}` already exists; choose another.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with self._add_lock:
            text = await self._add(interaction, file, name)
        await interaction.followup.send(text, ephemeral=True)

    async def _add(
        self, interaction: discord.Interaction, file: discord.Attachment, name: str
    ) -> str:
        bot = self.bot
        try:
            data = await file.read()
        except discord.HTTPException as exc:
            raise UserFacingError(f"Could not download `{file.filename}` ({exc.status}).") from None
        path = bot.storage.files.embedding_path(name)
        if path.exists():
            raise UserFacingError(f"A file for `{name}` is already stored; choose another name.")
        await asyncio.to_thread(atomic_write_bytes, path, data)
        try:
            fit = await bot.engine_door.add_embedding(path, name)
            info = fit.info
            await bot.storage.embeddings.add(
                name,
                path=str(path),
                vectors=info.vectors,
                width=info.width,
                owner_id=interaction.user.id,
                sha256=hashlib.sha256(data).hexdigest(),
                base_model=fit.model,
            )
        except (EmbeddingError, AlreadyExistsError) as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            message = str(exc).removeprefix("embedding: ")
            raise UserFacingError(
                f"`{clip(file.filename, 80)}` was not added: {message}."
            ) from None
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        log.info("embedding %s added by %s (%d vectors)", name, interaction.user.id, info.vectors)
        return (
            f"Added the embedding **{name}** ({info.vectors} vector"
            f"{'' if info.vectors == 1 else 's'}). Write `{name}` in a prompt or negative prompt "
            "to use it."
        )

    @group.command(name="delete", description="Delete an embedding (admins)")
    @app_commands.describe(name="Which embedding")
    @app_commands.autocomplete(name=_name_autocomplete)
    @admin_only()
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        """Unload an embedding, forget its record and remove its file; its name is a word again."""
        bot = self.bot
        record = await bot.storage.embeddings.get(name)
        if record is None:
            raise UserFacingError(
                f"No embedding named `{clip(name, 64)}`; `/embedding list` shows them."
            )
        if await training_running(bot):
            # A training shares the text encoder; resizing its token table mid-run is not safe.
            raise UserFacingError(
                "A LoRA training is running; delete the embedding once it has finished "
                "(`/queue` shows it)."
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with self._add_lock:
            await bot.storage.embeddings.delete(record.name)
            await bot.engine_door.forget_embedding(record.name)
            path = bot.storage.files.embedding_path(record.name)
            try:
                await asyncio.to_thread(path.unlink, missing_ok=True)
                note = ""
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc)
                note = " Its file was left on disk (see the bot's log)."
        log.info("embedding %s deleted by %s", record.name, interaction.user.id)
        await interaction.followup.send(
            f"Deleted the embedding `{record.name}`; the word is plain text in prompts again.{note}",
            ephemeral=True,
        )

    @group.command(name="list", description="List the embeddings you can write in prompts")
    async def list_(self, interaction: discord.Interaction) -> None:
        """Every embedding with its size."""
        records = await self.bot.storage.embeddings.list()
        if not records:
            await interaction.response.send_message(
                "No embeddings yet; an admin can add one with `/embedding add`.", ephemeral=True
            )
            return
        lines = [
            f"• `{r.name}`: {r.vectors} vector{'' if r.vectors == 1 else 's'}"
            + (f", for {r.base_model}" if r.base_model else "")
            for r in records
        ]
        await interaction.response.send_message(
            clip("Embeddings (write the name in a prompt):\n" + "\n".join(lines), 1900),
            ephemeral=True,
        )


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Embedding(bot))
