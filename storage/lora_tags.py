"""`<lora:name:w>` in a prompt: names looked up in the LoRA table, for every front end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import RequestError
from engine.lora_stack import resolve_lora_stack
from engine.prompt_syntax import find_lora_tags
from storage.loras import LoraRecord, LorasRepo


class UnknownLora(RequestError):
    """A <lora:…> tag names no LoRA this user may use (field 'loras')."""

    def __init__(self, name: str) -> None:
        super().__init__("loras", f"there is no LoRA named {name!r}")
        self.name = name


async def prompt_lora_entries(
    loras: LorasRepo,
    user_id: int,
    prompt: str,
    max_loras: int,
    check_fits: Callable[[LoraRecord], None] | None = None,
) -> list[list[Any]]:
    """The prompt's LoRA stack as [path, weight, name] entries.

    A name must be ready and shared or the user's own (UnknownLora otherwise); ``check_fits``
    may refuse a record (e.g. made for another architecture) by raising. Bad tag syntax or too
    many LoRAs: ValueError naming the field.
    """
    paths: dict[str, str] = {}
    for tag in find_lora_tags(prompt):
        record = await loras.get_lora(tag.name)
        visible = record is not None and (record.shared or record.owner_id == user_id)
        if record is None or not visible or record.status != "ready":
            raise UnknownLora(tag.name)
        if check_fits is not None:
            check_fits(record)
        paths[tag.name] = record.path
    stack = resolve_lora_stack(prompt, (), paths.get, max_loras)
    return [use.to_entry() for use in stack]
