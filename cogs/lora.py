"""/lora: pick a style (LoRA adapter) for your images, list and inspect them, add and delete them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import (
    UserFacingError,
    admin_only,
    ensure_not_banned,
    is_admin,
    training_running,
)
from cogs._ui import clip, info_embed
from cogs.errors import never_failing
from engine.errors import LoraError, LoraMismatchError
from engine.lora import WEIGHT_NAME
from storage import (
    AlreadyExistsError,
    LoraRecord,
    UnsafePathError,
    atomic_dir,
    atomic_write_bytes,
    safe_name,
)

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)

MAX_LIST_FIELDS = 25  # Discord allows 25 fields per embed


def can_see(bot: ImageBot, user: discord.abc.User, lora: LoraRecord) -> bool:
    """Whether the user may see and use this LoRA (shared, their own, or they are an admin)."""
    return lora.shared or lora.owner_id == user.id or is_admin(bot, user)


def describe_lora(lora: LoraRecord) -> str:
    """One line about a LoRA for lists: trigger, rank, owner, shared, status."""
    parts = [f"trigger `{lora.trigger_word}`" if lora.trigger_word else "no trigger word"]
    parts.append(f"rank {lora.rank}" if lora.rank else "rank ?")
    parts.append(f"owner <@{lora.owner_id}>" if lora.owner_id else "owner: nobody")
    parts.append("shared" if lora.shared else "private")
    if lora.status != "ready":
        parts.append(f"**{lora.status}**")
    return " · ".join(parts)


def check_name(name: str) -> str:
    """The name as given if it is usable as a LoRA (folder) name; else a plain refusal."""
    name = name.strip()
    try:
        clean = safe_name(name)
    except UnsafePathError as exc:
        raise UserFacingError(f"That name cannot be used: {exc}.") from None
    if clean != name:
        raise UserFacingError(
            f"LoRA names may only use letters, digits, '_', '-' and '.' (not first), at most "
            f"64 characters. Try `{clean}`."
        )
    return name


def remove_lora_files(root: Path, stored: str) -> bool:
    """Delete a LoRA's folder (or file) if it lies directly under the LoRA root; else leave it."""
    root = root.resolve()
    target = Path(stored).resolve()  # a symlink pointing elsewhere resolves outside the root
    if target.is_file() and target.parent == root:
        target.unlink()
        return True
    if target.is_file():
        target = target.parent
    trained = target.name == "final" or target.name.startswith("checkpoint-")
    if trained and target.parent.parent == root:
        # A LoRA trained here: loras/<name>/final (or a cancelled run's checkpoint-<step>)
        # beside its other checkpoints.
        target = target.parent
    if target.parent != root or not target.is_dir():
        log.warning("not deleting %s: it is not a LoRA folder under %s", stored, root)
        return False
    shutil.rmtree(target)
    return True


def install_lora_file(data: bytes, folder: Path) -> None:
    """Write the LoRA file into its folder atomically (a half-written folder never appears)."""
    with atomic_dir(folder, overwrite=True) as tmp:
        atomic_write_bytes(tmp / WEIGHT_NAME, data)


def write_upload(data: bytes, folder: Path) -> tuple[Path, str]:
    """Write uploaded bytes as the LoRA file in a scratch folder; return its path and sha256."""
    path = folder / WEIGHT_NAME
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@never_failing
async def _visible_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot: ImageBot = interaction.client  # type: ignore[assignment]
    names = await bot.storage.loras.lora_names(current, visible_to=interaction.user.id)
    return [app_commands.Choice(name=n, value=n) for n in names]


@never_failing
async def _any_status_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot: ImageBot = interaction.client  # type: ignore[assignment]
    visible_to = None if is_admin(bot, interaction.user) else interaction.user.id
    names = await bot.storage.loras.lora_names(current, visible_to=visible_to, status=None)
    return [app_commands.Choice(name=n, value=n) for n in names]


class Lora(commands.Cog):
    """Choose, list, inspect, add and delete LoRA styles."""

    group = app_commands.Group(name="lora", description="Styles (LoRA adapters) for your images")

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self._add_lock = asyncio.Lock()

    async def _find(self, user: discord.abc.User, name: str) -> LoraRecord:
        lora = await self.bot.storage.loras.get_lora(name.strip())
        if lora is None or not can_see(self.bot, user, lora):
            raise UserFacingError(f"There is no LoRA named `{name}`; see `/lora list`.")
        return lora

    @group.command(name="use", description="Use a LoRA style for your next images")
    @app_commands.describe(name="Which LoRA", scale="How strongly to apply it (0-2, default 1)")
    @app_commands.autocomplete(name=_visible_autocomplete)
    async def use(
        self,
        interaction: discord.Interaction,
        name: str,
        scale: app_commands.Range[float, 0.0, 2.0] = 1.0,
    ) -> None:
        """Make a LoRA active for the caller's generations."""
        await ensure_not_banned(self.bot, interaction.user.id)
        if not 0.0 <= scale <= 2.0:
            raise UserFacingError("The scale must be between 0 and 2.")
        lora = await self._find(interaction.user, name)
        if lora.status != "ready":
            raise UserFacingError(f"The LoRA `{lora.name}` is not ready ({lora.status}).")
        await self.bot.storage.users.set_active_lora(interaction.user.id, lora.name, scale)
        text = f"Your images now use the LoRA **{lora.name}** at scale {scale:g}."
        if lora.trigger_word:
            text += f" Put its trigger word `{lora.trigger_word}` in your prompt."
        text += " `/lora off` switches it off."
        await interaction.response.send_message(text, ephemeral=True)

    @group.command(name="off", description="Stop using a LoRA style")
    async def off(self, interaction: discord.Interaction) -> None:
        """Switch the caller's LoRA off."""
        profile = await self.bot.storage.users.get_user(interaction.user.id)
        await self.bot.storage.users.clear_active_lora(interaction.user.id)
        if profile is not None and profile.lora_name:
            text = f"The LoRA **{profile.lora_name}** is off; your images use the base model."
        else:
            text = "You had no LoRA switched on; your images use the base model."
        await interaction.response.send_message(text, ephemeral=True)

    @group.command(name="list", description="List the LoRA styles you can use")
    async def list_(self, interaction: discord.Interaction) -> None:
        """Show every LoRA visible to the caller in an embed."""
        user = interaction.user
        visible_to = None if is_admin(self.bot, user) else user.id
        loras = await self.bot.storage.loras.list_loras(visible_to=visible_to)
        profile = await self.bot.storage.users.get_user(user.id)
        active = profile.lora_name if profile else None
        if not loras:
            embed = info_embed("LoRA styles", "No LoRAs yet. Admins can add one with `/lora add`.")
        else:
            embed = info_embed(
                "LoRA styles", "Use one with `/lora use`; `/lora info` tells more about one."
            )
            for lora in loras[:MAX_LIST_FIELDS]:
                title = lora.name + (" (yours, active)" if lora.name == active else "")
                embed.add_field(name=title, value=clip(describe_lora(lora)), inline=False)
            if len(loras) > MAX_LIST_FIELDS:
                embed.set_footer(text=f"and {len(loras) - MAX_LIST_FIELDS} more")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @group.command(name="info", description="Details of one LoRA style")
    @app_commands.describe(name="Which LoRA")
    @app_commands.autocomplete(name=_any_status_autocomplete)
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        """Show a LoRA's details."""
        lora = await self._find(interaction.user, name)
        embed = info_embed(f"LoRA {lora.name}")
        embed.add_field(name="Status", value=lora.status)
        embed.add_field(name="Trigger word", value=lora.trigger_word or "-")
        embed.add_field(name="Rank", value=str(lora.rank or "?"))
        embed.add_field(name="Owner", value=f"<@{lora.owner_id}>" if lora.owner_id else "-")
        embed.add_field(name="Shared", value="yes" if lora.shared else "no (private)")
        embed.add_field(name="Base model", value=lora.base_model or "?")
        embed.add_field(name="Added", value=f"<t:{int(lora.created_at)}:R>")
        if lora.sha256:
            embed.add_field(name="SHA-256", value=f"`{lora.sha256[:16]}…`", inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @group.command(name="delete", description="Delete a LoRA style (its owner or an admin)")
    @app_commands.describe(name="Which LoRA")
    @app_commands.autocomplete(name=_any_status_autocomplete)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        """Delete the LoRA's record and its folder under the LoRA root."""
        bot = self.bot
        user = interaction.user
        lora = await self._find(user, name)
        if lora.owner_id != user.id and not is_admin(bot, user):
            raise UserFacingError(f"Only the owner of `{lora.name}` or an admin can delete it.")
        if lora.status == "training":
            raise UserFacingError(
                f"`{lora.name}` is still being trained; cancel the training first."
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        await bot.storage.loras.delete_lora(lora.name)
        try:
            removed = await asyncio.to_thread(
                remove_lora_files, bot.storage.files.lora_dir, lora.path
            )
        except OSError as exc:
            log.warning("could not delete the files of LoRA %s: %s", lora.name, exc)
            removed = False
        if not await training_running(self.bot):
            # A later LoRA of the same name must not reuse the old weights still in memory.
            await bot.engine_door.forget_lora(lora.name)
        log.info("LoRA %s deleted by %s (files removed: %s)", lora.name, user.id, removed)
        note = "" if removed else " Its files were left on disk (see the bot's log)."
        await interaction.followup.send(f"Deleted the LoRA `{lora.name}`.{note}", ephemeral=True)

    @group.command(name="add", description="Add a LoRA file made elsewhere (admins)")
    @app_commands.describe(
        file="A LoRA .safetensors file for this bot's base model",
        name="Name to use it by (letters, digits, _ - .)",
        trigger="The word that calls up the style in prompts",
    )
    @admin_only()
    async def add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        name: app_commands.Range[str, 1, 64],
        trigger: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        """Check an uploaded LoRA (header and a real load into the pipeline), store and register it."""
        bot = self.bot
        name = check_name(name)
        if not file.filename.lower().endswith(".safetensors"):
            raise UserFacingError(
                f"`{file.filename}` is not a .safetensors file; attach the LoRA's .safetensors."
            )
        limit_mb = bot.bot_settings.max_attachment_mb
        if file.size > limit_mb * 1024 * 1024:
            raise UserFacingError(
                f"`{file.filename}` is {file.size / 1024 / 1024:.1f} MB; "
                f"the limit is {limit_mb:g} MB (BOT_MAX_ATTACHMENT_MB)."
            )
        if await bot.storage.loras.get_lora(name) is not None:
            raise UserFacingError(f"A LoRA named `{name}` already exists; choose another name.")
        if await training_running(self.bot):
            raise UserFacingError("A LoRA is being trained right now; add this one afterwards.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with self._add_lock:
            record = await self._add(interaction, file, name, trigger)
        text = f"Added the LoRA **{record.name}** (rank {record.rank or '?'})."
        if record.trigger_word:
            text += f" Its trigger word is `{record.trigger_word}`."
        text += f" Anyone can now pick it with `/lora use {record.name}`."
        await interaction.followup.send(text, ephemeral=True)

    async def _add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        name: str,
        trigger: str | None,
    ) -> LoraRecord:
        bot = self.bot
        try:
            data = await file.read()
        except discord.HTTPException as exc:
            raise UserFacingError(f"Could not download `{file.filename}` ({exc.status}).") from None
        if len(data) > bot.bot_settings.max_attachment_mb * 1024 * 1024:
            raise UserFacingError(f"`{file.filename}` is larger than the attachment limit.")
        with tempfile.TemporaryDirectory(prefix="lora-upload-") as tmp:
            path, digest = await asyncio.to_thread(write_upload, data, Path(tmp))
            # The header is read first; only a real load proves it fits this base model.
            try:
                fit = await bot.engine_door.check_lora(path)
            except LoraMismatchError as exc:
                raise UserFacingError(
                    f"`{file.filename}` is not a LoRA for this bot's base model "
                    f"(`{exc.model}`): this LoRA {exc.problem}."
                ) from None
            except LoraError as exc:
                # The engine names the scratch copy; the user knows the file they uploaded.
                raise UserFacingError(
                    f"`{file.filename}` is not a usable LoRA: it {exc.problem}."
                ) from None
        folder = bot.storage.files.lora_path(name)
        # Claim the name first (as 'failed' until the file is in place), so two uploads or a
        # training of the same name can never write into each other's folder.
        try:
            await bot.storage.loras.add_lora(
                name,
                path=str(folder),
                owner_id=interaction.user.id,
                trigger_word=trigger.strip() if trigger and trigger.strip() else None,
                sha256=digest,
                rank=fit.info.rank,
                base_model=fit.model,
                base_width=fit.width,
                status="failed",
                shared=True,
            )
        except AlreadyExistsError:
            raise UserFacingError(
                f"A LoRA named `{name}` already exists; choose another name."
            ) from None
        try:
            await asyncio.to_thread(install_lora_file, data, folder)
            await bot.engine_door.forget_lora(name)  # no stale adapter of this name
            record = await bot.storage.loras.set_lora_status(name, "ready")
        except BaseException:
            await bot.storage.loras.delete_lora(name)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(remove_lora_files, bot.storage.files.lora_dir, str(folder))
            raise
        log.info(
            "LoRA %s added by %s (%s format, rank %s, %d bytes)",
            name, interaction.user.id, fit.info.format, fit.info.rank, len(data),
        )  # fmt: skip
        return record


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Lora(bot))
