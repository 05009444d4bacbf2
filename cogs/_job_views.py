"""The buttons on a generation job's messages; each custom id carries all it needs (restart-safe)."""

from __future__ import annotations

import re
from typing import Any

import discord

from cogs._checks import UserFacingError
from cogs._imagine_request import can_upscale
from cogs.errors import handle_interaction_error

DELETED = "That image was deleted."  # the answer to its buttons and to reopening it


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"sd:(?P<action>[a-z]+):(?P<job>[0-9]+)(?::(?P<index>[0-9]))?",
):
    """Every job button; the custom id carries the action, the job id and the image index
    (U/V buttons), so it survives restarts."""

    LABELS = {
        "cancel": ("Cancel", discord.ButtonStyle.danger, "✖️"),
        "reroll": ("Reroll", discord.ButtonStyle.primary, "🎲"),
        "var": ("Next seeds", discord.ButtonStyle.secondary, "⏭️"),  # id kept for old messages
        "seed": ("Reuse seed", discord.ButtonStyle.secondary, "🌱"),
        "del": ("Delete", discord.ButtonStyle.secondary, "🗑️"),
        "up": ("U", discord.ButtonStyle.secondary, None),
        "vary": ("V", discord.ButtonStyle.secondary, None),
        "subtle": ("Subtle", discord.ButtonStyle.secondary, "🪶"),
        "strong": ("Strong", discord.ButtonStyle.secondary, "💥"),
        "edit": ("Region / Zoom / Pan", discord.ButtonStyle.secondary, "🖌️"),
    }
    PER_IMAGE = ("up", "vary")

    def __init__(self, action: str, job_id: int, index: int | None = None, row: int | None = None):
        label, style, emoji = self.LABELS[action]
        custom_id = f"sd:{action}:{job_id}"
        if action in self.PER_IMAGE:
            label, custom_id = f"{label}{(index or 0) + 1}", f"{custom_id}:{index or 0}"
        super().__init__(
            discord.ui.Button(label=label, style=style, emoji=emoji, custom_id=custom_id, row=row)
        )
        self.action = action
        self.job_id = job_id
        self.index = index or 0

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> JobButton:
        """Rebuild the button from its custom id (also after a restart)."""
        action = match["action"]
        if action not in cls.LABELS or (action in cls.PER_IMAGE) != (match["index"] is not None):
            raise UserFacingError("This button is not known any more.")
        return cls(action, int(match["job"]), int(match["index"] or 0))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Dispatch to the cog's handler for this action."""
        cog = interaction.client.get_cog("Imagine")  # type: ignore[union-attr]
        try:
            await cog.on_button(interaction, self.action, self.job_id, self.index)
        except Exception as exc:
            await handle_interaction_error(interaction, exc)


def cancel_view(job_id: int) -> discord.ui.View:
    """The view shown while a job waits or runs."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id))
    return view


def result_view(job_id: int, request: dict[str, Any], count: int) -> discord.ui.View:
    """The view under a job's `count` finished images: U and V rows, then the job's buttons.

    ``request`` is the job's request (an upscaled or repainted job gets other buttons). At most
    5 rows of 5 buttons: 8 images take two rows of U and two of V. An upscaled image gets V1
    (and U1 while another ×2 fits), and Delete. A repainted result (img2img, a variation or a
    region) also gets Subtle / Strong: the same source again at a lower or higher strength,
    when a row is free for them (not after a zoom or pan: its new area needs full strength).
    Every result ends with Region / Zoom / Pan, which opens a panel of its own (the job's row
    has room for it: at most 5 buttons, whatever the image count).
    """
    upscaled = request.get("upscale") is not None
    repainted = bool(request.get("init_image")) and not request.get("outpaint")
    view = discord.ui.View(timeout=None)
    row = 0
    for action in ("up", "vary"):
        # U on a draft renders it at full quality first: no size limit applies.
        if action == "up" and not request.get("draft") and not can_upscale(request):
            continue
        for start in range(0, count, 5):
            for index in range(start, min(count, start + 5)):
                view.add_item(JobButton(action, job_id, index, row=row))
            row += 1
    if repainted and not upscaled and row <= 3:
        for action in ("subtle", "strong"):
            view.add_item(JobButton(action, job_id, row=row))
        row += 1
    for action in ("del", "edit") if upscaled else ("reroll", "var", "seed", "del", "edit"):
        view.add_item(JobButton(action, job_id, row=min(row, 4)))
    return view
