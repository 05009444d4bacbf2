"""`<lora:name:w>` in an /imagine prompt: names looked up in the LoRA table before queueing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cogs._checks import UserFacingError
from cogs._models import check_lora_fits
from cogs._option_names import refusal
from engine.lora_stack import resolve_lora_stack
from engine.prompt_syntax import find_lora_tags

if TYPE_CHECKING:
    from bot import ImageBot


async def inline_lora_entries(
    bot: ImageBot, user_id: int, prompt: str, model: str | None = None
) -> list[list[Any]]:
    """The prompt's LoRA stack as [path, weight, name] entries; UserFacingError when one is unusable.

    `model` (default: the resident one) is the job's base model: a LoRA made for another
    architecture is refused.
    """
    try:
        tags = find_lora_tags(prompt)
    except ValueError as exc:
        raise UserFacingError(refusal(exc)) from None
    paths: dict[str, str] = {}
    for tag in tags:
        record = await bot.storage.loras.get_lora(tag.name)
        visible = record is not None and (record.shared or record.owner_id == user_id)
        if record is None or not visible or record.status != "ready":
            raise UserFacingError(
                f"There is no LoRA named `{tag.name}`; see `/lora list` for the names you can use."
            )
        check_lora_fits(bot, record, model or bot.engine_door.resident_model)
        paths[tag.name] = record.path
    try:
        stack = resolve_lora_stack(prompt, (), paths.get, bot.config.generation.max_loras)
    except ValueError as exc:
        raise UserFacingError(refusal(exc)) from None
    return [use.to_entry() for use in stack]
