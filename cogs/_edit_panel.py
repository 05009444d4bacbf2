"""The Region / Zoom / Pan panel of a result: an ephemeral message for one image of a job.

Every custom id carries the job, the image and (once chosen) the region, so the panel works
after a restart; the prompt modal's submit is read from its custom id too (cogs/repaint.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import discord

from cogs._checks import UserFacingError
from cogs._imagine_request import full_quality
from cogs.errors import handle_interaction_error
from engine.region import PRESETS, parse_region
from engine.requests import random_seed

CELLS = (
    "Top left", "Top middle", "Top right",
    "Middle left", "Centre cell", "Middle right",
    "Bottom left", "Bottom middle", "Bottom right",
)  # fmt: skip
# Button action -> (label, emoji, the request's outpaint value).
OUTPAINT_ACTIONS = {
    "zoom15": ("Zoom out 1.5x", "🔍", "zoom:1.5"),
    "zoom2": ("Zoom out 2x", "🔭", "zoom:2"),
    "panl": ("Left", "⬅️", "pan:left"),
    "panr": ("Right", "➡️", "pan:right"),
    "panu": ("Up", "⬆️", "pan:up"),
    "pand": ("Down", "⬇️", "pan:down"),
}
MODAL_ID = re.compile(r"sde:modal:(?P<job>[0-9]+):(?P<index>[0-9]):(?P<region>[0-8]{1,9}|[a-z-]+)")
PROMPT_INPUT = "prompt"
MAX_PROMPT = 1500  # as /imagine's prompt option


def region_code(mask_region: str) -> str:
    """A mask_region as it travels in a custom id: cell digits ("036") or a preset slug."""
    found = parse_region(mask_region)
    if found is None:
        raise UserFacingError("That region is not known.")
    name, cells = found
    return name.replace(" ", "-") if name else "".join(str(c) for c in sorted(cells))


def region_of(code: str) -> str:
    """The mask_region of a custom id's region code (the inverse of region_code)."""
    text = ",".join(code) if code.isdigit() else code.replace("-", " ")
    if parse_region(text) is None:
        raise UserFacingError("That region is not known.")
    return text


def region_words(code: str) -> str:
    """A region code in words: the preset's name, or the cells as a 3x3 picture."""
    if not code.isdigit():
        return f"**{code.replace('-', ' ')}**"
    grid = ["".join("🟩" if str(r * 3 + c) in code else "⬛" for c in range(3)) for r in range(3)]
    return "the green cells\n" + "\n".join(grid)


class PanelSelect(
    discord.ui.DynamicItem[discord.ui.Select],
    template=r"sde:(?P<action>pick|cells|preset):(?P<job>[0-9]+)(?::(?P<index>[0-9]))?",
):
    """The panel's menus: which image (pick), grid cells or a named part of it."""

    def __init__(self, action: str, job_id: int, index: int = 0, **select: Any) -> None:
        custom_id = f"sde:{action}:{job_id}" + ("" if action == "pick" else f":{index}")
        super().__init__(discord.ui.Select(custom_id=custom_id, **select))
        self.action, self.job_id, self.index = action, job_id, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Select, match: re.Match[str]
    ) -> PanelSelect:
        """Rebuild the menu from its custom id (also after a restart)."""
        return cls(match["action"], int(match["job"]), int(match["index"] or 0))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Show the chosen image's panel, or the panel with the chosen region's buttons."""
        values = list(self.item.values)
        try:
            if self.action == "pick":
                index = int(values[0])
                await interaction.response.edit_message(
                    content=panel_text(index), view=panel_view(self.job_id, index)
                )
                return
            code = "".join(sorted(values)) if self.action == "cells" else values[0]
            region_of(code)  # refuse anything that is not a region
            await interaction.response.edit_message(
                content=panel_text(self.index, code), view=panel_view(self.job_id, self.index, code)
            )
        except Exception as exc:
            await handle_interaction_error(interaction, exc)


class PanelButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"sde:(?P<action>zoom15|zoom2|panl|panr|panu|pand|go|prompt):(?P<job>[0-9]+)"
    r":(?P<index>[0-9])(?::(?P<region>[0-8]{1,9}|[a-z-]{1,20}))?",
):
    """The panel's buttons: Zoom out, Pan, and Repaint / Edit prompt for the chosen region."""

    def __init__(
        self, action: str, job_id: int, index: int, code: str | None = None, row: int | None = None
    ) -> None:
        custom_id = f"sde:{action}:{job_id}:{index}" + (f":{code}" if code else "")
        if action in OUTPAINT_ACTIONS:
            label, emoji, _ = OUTPAINT_ACTIONS[action]
            style = discord.ButtonStyle.secondary
        elif action == "go":
            label, emoji, style = "Repaint", "🖌️", discord.ButtonStyle.primary
        else:
            label, emoji, style = "Edit prompt…", "✏️", discord.ButtonStyle.secondary
        button = discord.ui.Button(
            label=label, emoji=emoji, style=style, custom_id=custom_id, row=row
        )
        super().__init__(button)
        self.action, self.job_id, self.index, self.code = action, job_id, index, code

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> PanelButton:
        """Rebuild the button from its custom id (also after a restart)."""
        action, code = match["action"], match["region"]
        if (action in ("go", "prompt")) != (code is not None):
            raise UserFacingError("This button is not known any more.")
        return cls(action, int(match["job"]), int(match["index"]), code)

    async def callback(self, interaction: discord.Interaction) -> None:
        """Hand the click to the Repaint cog."""
        cog = interaction.client.get_cog("Repaint")  # type: ignore[union-attr]
        try:
            await cog.on_panel(interaction, self.action, self.job_id, self.index, self.code)
        except Exception as exc:
            await handle_interaction_error(interaction, exc)


def picker_view(job_id: int, count: int) -> discord.ui.View:
    """The first panel of a job with several images: which image to change."""
    view = discord.ui.View(timeout=None)
    options = [discord.SelectOption(label=f"Image {i + 1}", value=str(i)) for i in range(count)]
    view.add_item(PanelSelect("pick", job_id, placeholder="Which image?", options=options))
    return view


def panel_text(index: int, code: str | None = None) -> str:
    """What the panel of image `index` says (and the region chosen so far)."""
    if code is None:
        return (
            f"**Image {index + 1}**: **Vary (Region)**: pick grid cells or a named part, then "
            "Repaint (or Edit prompt… first). **Zoom out** and **Pan** paint new surroundings."
        )
    return (
        f"**Image {index + 1}**: Vary (Region) repaints {region_words(code)}\n"
        "Press **Repaint** to keep the prompt, or **Edit prompt…** to change it."
    )


def panel_view(job_id: int, index: int, code: str | None = None) -> discord.ui.View:
    """The panel of one image: cells, named parts, zoom, pan, and (with a region) Repaint.

    Five rows at most: a menu takes a whole row, so cells, presets, zoom and pan use four and
    the chosen region's Repaint / Edit prompt… buttons the fifth.
    """
    view = discord.ui.View(timeout=None)
    cells = set(code) if code and code.isdigit() else set()
    view.add_item(
        PanelSelect(
            "cells", job_id, index, placeholder="Vary (Region): grid cells to repaint",
            min_values=1, max_values=len(CELLS), row=0,
            options=[
                discord.SelectOption(label=name, value=str(i), default=str(i) in cells)
                for i, name in enumerate(CELLS)
            ],
        )
    )  # fmt: skip
    view.add_item(
        PanelSelect(
            "preset", job_id, index, placeholder="Vary (Region): or a named part", row=1,
            options=[
                discord.SelectOption(
                    label=name, value=name.replace(" ", "-"), default=code == name.replace(" ", "-")
                )
                for name in PRESETS
            ],
        )
    )  # fmt: skip
    for action in ("zoom15", "zoom2"):
        view.add_item(PanelButton(action, job_id, index, row=2))
    for action in ("panl", "panr", "panu", "pand"):
        view.add_item(PanelButton(action, job_id, index, row=3))
    if code:
        view.add_item(PanelButton("go", job_id, index, code, row=4))
        view.add_item(PanelButton("prompt", job_id, index, code, row=4))
    return view


class PromptModal(discord.ui.Modal):
    """The optional prompt editor of Vary (Region); its submit is handled by custom id."""

    def __init__(self, job_id: int, index: int, code: str, prompt: str) -> None:
        super().__init__(
            title="Vary (Region): the new prompt",
            custom_id=f"sde:modal:{job_id}:{index}:{code}",
            timeout=900,
        )
        self.add_item(
            discord.ui.TextInput(
                label="Prompt",
                style=discord.TextStyle.paragraph,
                default=prompt[:MAX_PROMPT],
                max_length=MAX_PROMPT,
                custom_id=PROMPT_INPUT,
            )
        )


def submitted_text(data: dict[str, Any], custom_id: str) -> str | None:
    """The value of one text input in a modal submit's data (rows or labels), or None."""
    stack = list(data.get("components") or [])
    while stack:
        item = stack.pop()
        if item.get("custom_id") == custom_id and "value" in item:
            return str(item["value"])
        stack += item.get("components") or []
        if isinstance(item.get("component"), dict):
            stack.append(item["component"])
    return None


def region_request(
    request: dict[str, Any],
    generation: Any,
    index: int,
    *,
    mask_region: str | None = None,
    outpaint: str | None = None,
    prompt: str | None = None,
) -> dict[str, Any]:
    """The request of a region or outpaint job on image `index` of a finished job.

    The image is the new source; size and strength are left to the engine (the source's own
    size or the pan's canvas; strength 1), with a new seed. On a draft it gives full quality,
    as V does.
    """
    paths = list(generation.image_paths) if generation is not None else []
    if not 0 <= index < len(paths) or not Path(paths[index]).is_file():
        raise UserFacingError(f"Image {index + 1} of that job is no longer on the bot's disk.")
    if request.get("draft"):
        request = full_quality(request)
    new = {
        **request, "init_image": paths[index], "upscale": None, "strength": None,
        "width": None, "height": None, "mask_image": None, "mask_blur": None,
        "mask_region": mask_region, "outpaint": outpaint, "seed": random_seed(),
    }  # fmt: skip
    if prompt is not None:
        new["prompt"] = prompt
    return new
