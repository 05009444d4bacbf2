"""The look of the bot: embeds, status lines, sizes; shared by every cog."""

from __future__ import annotations

import io
from typing import Any

import discord

from scheduling.jobs import JobRecord

COLOR_OK = discord.Color.green()
COLOR_INFO = discord.Color.blurple()
COLOR_ERROR = discord.Color.red()
MAX_FIELD = 1024


def clip(text: str, limit: int = MAX_FIELD) -> str:
    """Shorten text to Discord's field limit with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_eta(seconds: float | None) -> str:
    """'about 40 s', 'about 3 min', or 'unknown yet'."""
    if seconds is None:
        return "time unknown yet"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def queued_line(position: int, eta: float | None) -> str:
    """Status text of a waiting job."""
    where = "next in line" if position <= 1 else f"position {position} in the queue"
    return f"🕐 Queued — {where}, {format_eta(eta)}."


def progress_line(step: int, total: int, eta: float | None, what: str = "Generating") -> str:
    """Status text of a running job with a text progress bar."""
    fraction = step / total if total else 0.0
    filled = round(fraction * 12)
    bar = "█" * filled + "░" * (12 - filled)
    left = f", {format_eta(eta)} left" if eta is not None and step < total else ""
    return f"🎨 {what} — `{bar}` step {step}/{total} ({fraction:.0%}){left}"


def size_choices(base_width: int, base_height: int, preset: str) -> dict[str, tuple[int, int]]:
    """Named sizes relative to the model's native size; larger ones only on bigger presets."""

    def r8(value: float) -> int:
        return max(64, round(value / 8) * 8)

    sizes = {
        "square": (base_width, base_height),
        "portrait": (base_width, r8(base_height * 1.5)),
        "landscape": (r8(base_width * 1.5), base_height),
    }
    if preset in ("6gb", "8gb", "none"):
        sizes["large square"] = (r8(base_width * 1.5), r8(base_height * 1.5))
    if preset in ("2gb",):
        sizes["small square"] = (r8(base_width * 0.75), r8(base_height * 0.75))
    return sizes


def result_embed(job: JobRecord, data: dict[str, Any]) -> discord.Embed:
    """The embed under finished images: prompt, parameters and the seed of each image."""
    request = job.request.to_dict()
    embed = discord.Embed(description=clip(request.get("prompt", ""), 4000), color=COLOR_OK)
    if request.get("negative_prompt"):
        embed.add_field(name="Negative", value=clip(request["negative_prompt"]), inline=False)
    seeds = data.get("seeds", [])
    embed.add_field(name="Seeds", value=", ".join(f"`{s}`" for s in seeds) or "-", inline=False)
    embed.add_field(name="Steps", value=str(request.get("num_inference_steps")))
    embed.add_field(name="CFG", value=f"{request.get('guidance_scale', 0):g}")
    embed.add_field(name="Sampler", value=str(request.get("scheduler")))
    embed.add_field(name="Size", value=f"{request.get('width')}×{request.get('height')}")
    if request.get("lora_name"):
        embed.add_field(
            name="LoRA", value=f"{request['lora_name']} ({request.get('lora_scale', 1):g})"
        )
    model = data.get("model") or "?"
    seconds = data.get("seconds")
    footer = f"job {job.id} · {model}"
    if seconds is not None:
        footer += f" · {seconds:.1f} s"
    embed.set_footer(text=footer)
    return embed


def info_embed(
    title: str, description: str = "", color: discord.Color = COLOR_INFO
) -> discord.Embed:
    """A plain informational embed."""
    return discord.Embed(title=title, description=clip(description, 4000), color=color)


def saved_png_file(data: bytes, name: str, spoiler: bool = False) -> discord.File:
    """A discord.File of PNG bytes already encoded (e.g. read from the saved image)."""
    return discord.File(io.BytesIO(data), filename=name, spoiler=spoiler)


def png_file(
    image: Any, name: str, parameters: str | None = None, spoiler: bool = False
) -> discord.File:
    """A discord.File of a PIL image as PNG (with its parameters chunk)."""
    from engine.metadata import png_info

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(parameters) if parameters else None)
    buffer.seek(0)
    return discord.File(buffer, filename=name, spoiler=spoiler)
