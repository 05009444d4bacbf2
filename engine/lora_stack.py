"""Several LoRAs per request: `<lora:name:w>` tags and `loras=[(name_or_path, w)]`, resolved to files.

The engine does not know where names are registered: the caller passes a resolver (the bot reads
its LoRA table; the command line looks in a folder such as models/lora).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.lora import lora_display_name
from engine.prompt_syntax import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT, find_lora_tags

# name -> a LoRA file or folder, or None when the name is not known
LoraResolver = Callable[[str], "str | Path | None"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA of a request's stack: the name it is known by, its file or folder, its weight."""

    name: str
    path: str
    weight: float

    def to_entry(self) -> list[Any]:
        """The JSON form stored in a request: [path, weight, name]."""
        return [self.path, self.weight, self.name]


def looks_like_path(ref: str) -> bool:
    """Whether a LoRA reference is a path rather than a registered name."""
    return "/" in ref or "\\" in ref or ref.lower().endswith(".safetensors")


def folder_resolver(root: str | Path) -> LoraResolver:
    """A resolver for names saved as ROOT/NAME/final (a training run) or ROOT/NAME (a folder or file)."""
    base = Path(root).expanduser()

    def resolve(name: str) -> Path | None:
        if not _SAFE_NAME.match(name):
            return None
        for candidate in (
            base / name / "final",
            base / name,
            base / f"{name}.safetensors",
        ):
            if candidate.exists():
                return candidate
        return None

    return resolve


def too_many(max_loras: int) -> str:
    """What is wrong with a stack longer than `max_loras` (the owner's limit, GEN_MAX_LORAS)."""
    if max_loras <= 0:
        return "LoRA tags are switched off on this machine"
    return f"at most {max_loras} LoRA{'s' if max_loras > 1 else ''} in one prompt"


def check_weight(weight: Any, where: str) -> float:
    """A LoRA weight as a float in -2..2, or ValueError naming where it came from."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{where}: the weight must be a number (got {weight!r})")
    if not MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
        raise ValueError(
            f"{where}: the weight must be between {MIN_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g} "
            f"(got {weight:g})"
        )
    return float(weight)


def resolve_lora_stack(
    prompt: str,
    extra: Sequence[tuple[str | Path, float]] = (),
    resolver: LoraResolver | None = None,
    max_loras: int = 3,
) -> list[LoraUse]:
    """The LoRAs asked for by `extra` then by the prompt's tags, resolved; ValueError for unknown names.

    A LoRA named twice is used once, with its last weight.
    """
    wanted: list[tuple[str, float]] = []
    for index, item in enumerate(extra):
        if isinstance(item, (str, Path)):
            item = (item, 1.0)
        ref, weight = item
        wanted.append((str(ref), check_weight(weight, f"loras[{index}]")))
    wanted += [(tag.name, tag.weight) for tag in find_lora_tags(prompt)]
    stack: dict[str, LoraUse] = {}
    for ref, weight in wanted:
        use = _resolve_one(ref, weight, resolver)
        stack.pop(use.name.lower(), None)
        stack[use.name.lower()] = use
    if len(stack) > max_loras:
        raise ValueError(
            f"loras: {too_many(max_loras)} (got {len(stack)}: "
            + ", ".join(u.name for u in stack.values())
            + ")"
        )
    return list(stack.values())


def _resolve_one(ref: str, weight: float, resolver: LoraResolver | None) -> LoraUse:
    if looks_like_path(ref) and Path(ref).expanduser().exists():
        path = Path(ref).expanduser()
        name = lora_display_name(path)
        if name in ("final", "lora") or name.startswith("checkpoint"):
            name = path.parent.name if path.is_dir() else path.parent.parent.name
        return LoraUse(name, str(path), weight)
    found = resolver(ref) if resolver is not None and not looks_like_path(ref) else None
    if found is None:
        if looks_like_path(ref):
            raise ValueError(f"loras: file not found: {ref}")
        raise ValueError(
            f"loras: unknown LoRA {ref!r}; use the name of a registered LoRA (see /lora list "
            "or the folders under models/lora)"
        )
    return LoraUse(ref, str(found), weight)


def stack_from_entries(entries: Sequence[Any], max_loras: int) -> tuple[LoraUse, ...]:
    """Validate a request's stored stack ([path, weight, name] entries) and return it."""
    if not isinstance(entries, (list, tuple)):
        raise ValueError("loras: must be a list of [path, weight, name] entries")
    if len(entries) > max_loras:
        raise ValueError(f"loras: {too_many(max_loras)} (got {len(entries)})")
    stack: list[LoraUse] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise ValueError(f"loras[{index}]: must be [path, weight] or [path, weight, name]")
        path, weight = str(entry[0]), check_weight(entry[1], f"loras[{index}]")
        name = str(entry[2]) if len(entry) == 3 and entry[2] else lora_display_name(path)
        stack.append(LoraUse(name, path, weight))
    return tuple(stack)
