"""`<lora:name:w>` in an /imagine prompt: names looked up in the LoRA table before queueing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cogs._checks import UserFacingError
from cogs._models import check_lora_fits
from cogs._option_names import refusal
from storage.lora_tags import UnknownLora, prompt_lora_entries

if TYPE_CHECKING:
    from bot import ImageBot


async def inline_lora_entries(
    bot: ImageBot, user_id: int, prompt: str, model: str | None = None
) -> list[list[Any]]:
    """The prompt's LoRA stack as [path, weight, name] entries; UserFacingError when one is unusable.

    `model` (default: the resident one) is the job's base model: a LoRA made for another
    architecture is refused.
    """
    base = model or bot.engine_door.resident_model
    try:
        return await prompt_lora_entries(
            bot.storage.loras,
            user_id,
            prompt,
            bot.config.generation.max_loras,
            lambda record: check_lora_fits(bot, record, base),
        )
    except UnknownLora as exc:
        raise UserFacingError(
            f"There is no LoRA named `{exc.name}`; see `/lora list` for the names you can use."
        ) from None
    except ValueError as exc:
        raise UserFacingError(refusal(exc)) from None
