"""/history: a member's recent generations, newest first, paged, each openable with U/V buttons."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs._checks import UserFacingError
from cogs._job_views import DELETED, result_view
from cogs._ui import COLOR_INFO, clip, saved_png_file

if TYPE_CHECKING:
    from bot import ImageBot
    from storage.generations import GenerationRecord

log = logging.getLogger(__name__)

PAGE = 4  # entries per page: one row of Open buttons, one row to page
THUMB = 96


def _button(label: str, custom_id: str, *, disabled: bool = False, row: int = 0):
    return discord.ui.Button(
        label=label,
        custom_id=custom_id,
        style=discord.ButtonStyle.secondary,
        disabled=disabled,
        row=row,
    )


class _HistoryButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"sdh:(?P<action>page|open):(?P<value>[0-9]+)",
):
    """Paging and Open buttons; the custom id carries everything, so they survive restarts."""

    def __init__(self, action: str, value: int, label: str, **kwargs: object) -> None:
        super().__init__(_button(label, f"sdh:{action}:{value}", **kwargs))  # type: ignore[arg-type]
        self.action, self.value = action, value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> _HistoryButton:
        """Rebuild the button from its custom id."""
        return cls(match["action"], int(match["value"]), item.label or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        """Show another page, or open one generation."""
        from cogs.errors import handle_interaction_error

        cog = interaction.client.get_cog("History")  # type: ignore[union-attr]
        try:
            if self.action == "page":
                await cog.show_page(interaction, self.value, edit=True)
            else:
                await cog.open(interaction, self.value)
        except Exception as exc:
            await handle_interaction_error(interaction, exc)


def contact_sheet(paths: list[str | None]) -> bytes | None:
    """PNG of the first image of each entry side by side (a gap where a file is missing)."""
    from PIL import Image

    tiles = []
    for path in paths:
        try:
            with Image.open(path) as image:  # type: ignore[arg-type]
                tile = image.convert("RGB")
                tile.thumbnail((THUMB, THUMB))
                tiles.append(tile)
        except (OSError, TypeError, ValueError):
            tiles.append(Image.new("RGB", (THUMB, THUMB), "gray"))
    if not tiles:
        return None
    sheet = Image.new("RGB", (len(tiles) * (THUMB + 4) - 4, THUMB), "white")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, (index * (THUMB + 4), 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _entry(number: int, record: GenerationRecord) -> str:
    seeds = ", ".join(str(s) for s in record.seeds)
    when = f"<t:{int(record.created_at)}:R>" if record.created_at else ""
    prompt = clip(record.prompt.replace("`", "'"), 200)
    return (
        f"**#{number}** `{prompt}`\n{len(record.seeds)} image(s) · {record.width}×"
        f"{record.height} · seed {seeds} · job {record.job_id} {when}"
    )


class History(commands.Cog):
    """Shows each member their own recent generations."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        """Register the restart-safe buttons."""
        self.bot.add_dynamic_items(_HistoryButton)

    async def cog_unload(self) -> None:
        """Unregister the buttons."""
        self.bot.remove_dynamic_items(_HistoryButton)

    @app_commands.command(name="history", description="Your recent images, newest first")
    async def history(self, interaction: discord.Interaction) -> None:
        """Show the first page of the caller's generations."""
        await self.show_page(interaction, 0, edit=False)

    async def show_page(self, interaction: discord.Interaction, offset: int, *, edit: bool) -> None:
        """Show PAGE generations of the caller from ``offset`` (only the caller sees it)."""
        repo = self.bot.storage.generations
        user_id = interaction.user.id
        records = await repo.recent_for_user(user_id, limit=PAGE + 1, offset=offset)
        more, records = len(records) > PAGE, records[:PAGE]
        if not records and offset == 0:
            text = "You have no images yet — `/imagine` something."
            if edit:
                await interaction.response.edit_message(content=text, embed=None, view=None)
            else:
                await interaction.response.send_message(text, ephemeral=True)
            return
        embed = discord.Embed(title="Your images", color=COLOR_INFO)
        embed.description = "\n".join(
            _entry(offset + n, record) for n, record in enumerate(records, start=1)
        )
        firsts = [record.image_paths[0] if record.image_paths else None for record in records]
        sheet = await asyncio.to_thread(contact_sheet, firsts)
        files = []
        if sheet is not None:
            files.append(saved_png_file(sheet, "history.png"))
            embed.set_image(url="attachment://history.png")
        embed.set_footer(text=f"{offset + 1}–{offset + len(records)}; Open shows the U/V buttons")
        view = discord.ui.View(timeout=None)
        for number, record in enumerate(records, start=offset + 1):
            if record.job_id is not None:
                view.add_item(_HistoryButton("open", record.job_id, f"Open #{number}", row=0))
        view.add_item(
            _HistoryButton("page", max(0, offset - PAGE), "◀ Newer", disabled=offset == 0, row=1)
        )
        view.add_item(_HistoryButton("page", offset + PAGE, "Older ▶", disabled=not more, row=1))
        if edit:
            await interaction.response.edit_message(
                content=None, embed=embed, attachments=files, view=view
            )
        else:
            await interaction.response.send_message(
                embed=embed, files=files, view=view, ephemeral=True
            )

    async def open(self, interaction: discord.Interaction, job_id: int) -> None:
        """Show one generation's images with their U/V buttons (only the caller sees it)."""
        generation = await self.bot.storage.generations.get_generation_by_job(job_id)
        job = await self.bot.storage.get_job(job_id)
        if generation is None or job is None or generation.user_id != interaction.user.id:
            raise UserFacingError("That generation is not in your history.")
        if generation.deleted_at is not None:
            raise UserFacingError(DELETED)
        files = []
        for index, path in enumerate(generation.image_paths):
            try:
                data = await asyncio.to_thread(Path(path).read_bytes)
            except OSError:
                continue
            files.append(saved_png_file(data, f"job{job_id}-{index}.png"))
        if not files:
            raise UserFacingError("The images of that generation are no longer on the bot's disk.")
        request = job.request.to_dict()
        view = result_view(job_id, request, count=len(generation.image_paths))
        prompt = clip(generation.prompt.replace("`", "'"), 300)
        text = f"Job {job_id}: `{prompt}`"
        await interaction.response.send_message(text, files=files, view=view, ephemeral=True)


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(History(bot))
