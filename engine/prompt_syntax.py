"""The web-UI prompt syntax: `(word)`, `(word:1.3)`, `[word]`, `\\(` escapes and `<lora:name:w>` tags.

Parsing only: text in, (fragment, weight) pairs and LoRA references out. The embedding math is
compel's (see engine.prompts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_FACTOR = 1.1  # `(word)` in the web UIs
SQUARE_FACTOR = 1 / 1.1  # `[word]`
MIN_PROMPT_WEIGHT = 0.0
MAX_PROMPT_WEIGHT = 3.0
MIN_LORA_WEIGHT = -2.0
MAX_LORA_WEIGHT = 2.0

_LORA_TAG = re.compile(r"<lora:([^:>]*)(?::([^>]*))?>", re.IGNORECASE)
_TOKEN = re.compile(
    r"""
    \\[\\()\[\]]                          # an escaped bracket or backslash
    | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ':1.3)' closes a round group with its weight
    | [()\[\]]                            # a bracket
    | [^\\()\[\]:]+                       # plain text
    | [\\:]                               # a lone backslash or colon
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:name:weight>` reference written in a prompt."""

    name: str
    weight: float


def find_lora_tags(prompt: str) -> list[LoraTag]:
    """The `<lora:name[:weight]>` tags in a prompt, in order (ValueError for a bad weight)."""
    tags: list[LoraTag] = []
    for match in _LORA_TAG.finditer(prompt):
        name = match.group(1).strip()
        if not name:
            raise ValueError(f"prompt: {match.group(0)!r} names no LoRA")
        raw = match.group(2)
        try:
            weight = 1.0 if raw is None or not raw.strip() else float(raw)
        except ValueError:
            raise ValueError(
                f"prompt: the weight in {match.group(0)!r} is not a number "
                f"(write <lora:{name}:0.8>)"
            ) from None
        if not MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
            raise ValueError(
                f"prompt: the weight in {match.group(0)!r} must be between "
                f"{MIN_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}"
            )
        tags.append(LoraTag(name, weight))
    return tags


def strip_lora_tags(prompt: str) -> str:
    """The prompt without its `<lora:...>` tags (the text the text encoder sees)."""
    if "<" not in prompt:
        return prompt
    return re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub("", prompt)).strip()


_AND = re.compile(r"(?<![\w\\])AND(?!\w)")
_BREAK = re.compile(r"\s*(?<!\w)BREAK(?!\w)\s*")


def check_supported(text: str, field_name: str = "prompt") -> None:
    """Refuse web-UI syntax that would silently draw something else: `AND`, `[a:b:when]`, `[a|b]`."""
    if _AND.search(text):
        raise ValueError(
            f"{field_name}: `AND` (mixing two prompts, from other web UIs) is not supported here; "
            "write `and` in lower case to mean the word"
        )
    group = _switching_group(strip_lora_tags(text))
    if group is not None:
        what = "alternating words" if "|" in group else "switching words during the steps"
        raise ValueError(
            f"{field_name}: `{group[:60]}` ({what}, from other web UIs) is not supported here; "
            "write the words you want, or `[word]` to weaken one"
        )


def _switching_group(text: str) -> str | None:
    """The first `[...]` group holding a `:` or `|` of its own (prompt editing), if any."""
    stack: list[tuple[str, int]] = []
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            stack.append((char, index))
        elif char in ")]" and stack:
            stack.pop()
        elif char in ":|" and stack and stack[-1][0] == "[":
            start = stack[-1][1]
            end = text.find("]", index)
            return text[start : end + 1] if end != -1 else text[start:]
    return None


def drop_break(text: str) -> tuple[str, bool]:
    """The text without the web UIs' `BREAK` (not supported: read as one text) and whether it had one."""
    if "BREAK" not in text:
        return text, False
    cleaned = _BREAK.sub(" ", text).strip()
    return cleaned, cleaned != text.strip()


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split web-UI weighted text into (fragment, weight) pairs; plain text gives one pair at 1.0.

    `(x)` multiplies by 1.1, `(x:w)` by w, `[x]` divides by 1.1, groups nest, `\\(` is a literal
    bracket, and a bracket left open applies to the rest of the text (as in the web UIs).
    """
    pieces: list[list] = []  # [text, weight], mutated as groups close
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif match.group(1) is not None:
            if not round_open:
                pieces.append([token, 1.0])
                continue
            weight = float(match.group(1))
            if not MIN_PROMPT_WEIGHT <= weight <= MAX_PROMPT_WEIGHT:
                raise ValueError(
                    f"prompt: weight {weight:g} in {token.strip()!r} must be between "
                    f"{MIN_PROMPT_WEIGHT:g} and {MAX_PROMPT_WEIGHT:g}"
                )
            scale(round_open.pop(), weight)
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND_FACTOR)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE_FACTOR)
        else:
            pieces.append([token, 1.0])
    for start in round_open:
        scale(start, ROUND_FACTOR)
    for start in square_open:
        scale(start, SQUARE_FACTOR)
    return _merge(pieces)


def _merge(pieces: list[list]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in pieces:
        weight = round(weight, 6)  # 1.1 * (1 / 1.1) is weight 1, not 0.9999999
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    merged = [(t, w) for t, w in merged if t.strip()] or [("", 1.0)]
    return merged


def is_plain(fragments: list[tuple[str, float]]) -> bool:
    """Whether parsed text carries no weight other than 1 (it encodes exactly as plain text)."""
    return all(weight == 1.0 for _, weight in fragments)


def plain_text(fragments: list[tuple[str, float]]) -> str:
    """The text of parsed fragments joined back (escapes resolved, brackets of groups removed)."""
    return "".join(text for text, _ in fragments)
