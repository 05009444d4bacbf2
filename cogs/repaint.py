"""Vary (Region), Zoom out and Pan on a result image: the panel's clicks become queued jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from cogs._checks import UserFacingError, ensure_not_banned, ensure_prompt_allowed
from cogs._edit_panel import (
    MODAL_ID,
    OUTPAINT_ACTIONS,
    PROMPT_INPUT,
    PanelButton,
    PanelSelect,
    PromptModal,
    panel_text,
    panel_view,
    picker_view,
    region_of,
    region_request,
    submitted_text,
)
from cogs._imagine_request import submit_for
from cogs._inline_loras import inline_lora_entries
from cogs._job_views import DELETED
from cogs._models import check_embeddings_fit
from cogs.errors import handle_interaction_error
from scheduling.jobs import JobRecord

if TYPE_CHECKING:
    from bot import ImageBot


class Repaint(commands.Cog):
    """The Region / Zoom / Pan panel of result images and the jobs it queues."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        """Register the panel's restart-safe menus and buttons."""
        self.bot.add_dynamic_items(PanelSelect, PanelButton)

    async def cog_unload(self) -> None:
        """Unregister them."""
        self.bot.remove_dynamic_items(PanelSelect, PanelButton)

    async def _finished(self, job_id: int) -> tuple[JobRecord, Any]:
        """A finished generation job and its images; a plain refusal when they are gone."""
        job = await self.bot.storage.get_job(job_id)
        if job is None or job.kind != "generate":
            raise UserFacingError("That job no longer exists.")
        generation = await self.bot.storage.generations.get_generation_by_job(job_id)
        if generation is None or not generation.image_paths:
            raise UserFacingError("That job has no images to change.")
        if generation.deleted_at is not None:
            raise UserFacingError(DELETED)
        return job, generation

    async def open_panel(self, interaction: discord.Interaction, job_id: int) -> None:
        """Answer the result's Region / Zoom / Pan button with the panel, only for the clicker."""
        _, generation = await self._finished(job_id)
        count = len(generation.image_paths)
        if count > 1:
            text, view = "Which image do you want to change?", picker_view(job_id, count)
        else:
            text, view = panel_text(0), panel_view(job_id, 0)
        await interaction.response.send_message(text, view=view, ephemeral=True)

    async def on_panel(
        self,
        interaction: discord.Interaction,
        action: str,
        job_id: int,
        index: int,
        code: str | None,
    ) -> None:
        """A panel button: Edit prompt… opens the modal; the others queue a job at once."""
        if action == "prompt" and code is not None:
            job, _ = await self._finished(job_id)
            # A modal must be the first answer to the click (no defer before it).
            await interaction.response.send_modal(
                PromptModal(job_id, index, code, job.request.prompt)
            )
            return
        if action == "go" and code is not None:
            await self._queue(interaction, job_id, index, mask_region=region_of(code))
            return
        await self._queue(interaction, job_id, index, outpaint=OUTPAINT_ACTIONS[action][2])

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """The prompt modal's submit, read from its custom id (so it works after a restart)."""
        if interaction.type != discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = MODAL_ID.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        try:
            prompt = (submitted_text(data, PROMPT_INPUT) or "").strip()
            if not prompt:
                raise UserFacingError("`prompt`: write what to paint in the region.")
            await self._queue(
                interaction, int(match["job"]), int(match["index"]),
                mask_region=region_of(match["region"]), prompt=prompt,
            )  # fmt: skip
        except Exception as exc:
            await handle_interaction_error(interaction, exc)

    async def _queue(
        self, interaction: discord.Interaction, job_id: int, index: int, **change: Any
    ) -> None:
        """Queue a region or outpaint job on image `index` of a job, as U/V queue theirs."""
        bot, user = self.bot, interaction.user
        imagine = bot.get_cog("Imagine")
        await ensure_not_banned(bot, user.id)
        imagine.check_cooldown(user)  # type: ignore[union-attr]
        job, generation = await self._finished(job_id)
        request = region_request(job.request.to_dict(), generation, index, **change)
        prompt = change.get("prompt")
        if prompt is not None and prompt != job.request.prompt:
            negative = request.get("negative_prompt")
            await ensure_prompt_allowed(bot, prompt, negative)
            model = request.get("model")
            await check_embeddings_fit(bot, model, prompt, negative)
            request["loras"] = await inline_lora_entries(bot, user.id, prompt, model)
        await submit_for(bot, interaction, request)
        imagine.cooldowns.mark(user.id)  # type: ignore[union-attr]


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Repaint(bot))
