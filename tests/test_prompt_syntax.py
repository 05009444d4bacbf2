"""The web-UI prompt syntax: weights, brackets, escapes and <lora:…> tags (parsing only)."""

from __future__ import annotations

import pytest

from engine.prompt_syntax import (
    LoraTag,
    check_supported,
    drop_break,
    find_lora_tags,
    is_plain,
    parse_weights,
    plain_text,
    strip_lora_tags,
)
from engine.requests import check_prompt_syntax


def test_plain_text_is_one_fragment_at_weight_one() -> None:
    assert parse_weights("a castle at dusk, detailed: 4k") == [
        ("a castle at dusk, detailed: 4k", 1.0)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (red) castle", [("a ", 1.0), ("red", 1.1), (" castle", 1.0)]),
        ("a ((red)) castle", [("a ", 1.0), ("red", 1.21), (" castle", 1.0)]),
        ("a (red:1.3) castle", [("a ", 1.0), ("red", 1.3), (" castle", 1.0)]),
        ("a [red] castle", [("a ", 1.0), ("red", round(1 / 1.1, 6)), (" castle", 1.0)]),
        ("((red:1.5))", [("red", round(1.5 * 1.1, 6))]),
        ("(red [dog]:1.2)", [("red ", 1.2), ("dog", round(1.2 / 1.1, 6))]),
        ("a (red castle", [("a ", 1.0), ("red castle", 1.1)]),  # open bracket: rest of the text
    ],
)
def test_weights(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weights(text) == expected


def test_escaped_and_unmatched_brackets_are_text() -> None:
    fragments = parse_weights(r"a \(red\) castle \[x\] :1.2) ]")
    assert is_plain(fragments)
    assert plain_text(fragments) == "a (red) castle [x] :1.2) ]"


def test_weight_one_and_cancelling_groups_are_plain() -> None:
    assert is_plain(parse_weights("(red:1.0) castle"))
    assert is_plain(parse_weights("([red]) castle"))
    assert plain_text(parse_weights("(red:1) castle")) == "red castle"


def test_out_of_range_weight_is_refused() -> None:
    with pytest.raises(ValueError, match=r"weight 5 .*between 0 and 3"):
        parse_weights("(red:5)")


def test_lora_tags_found_and_stripped() -> None:
    prompt = "a castle <lora:ink:0.7>, dusk <lora:detail> <LORA:neg:-1.5>"
    assert find_lora_tags(prompt) == [
        LoraTag("ink", 0.7),
        LoraTag("detail", 1.0),
        LoraTag("neg", -1.5),
    ]
    assert strip_lora_tags(prompt) == "a castle , dusk"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:ink:3>", "between -2 and 2"),
        ("<lora:ink:strong>", "not a number"),
        ("<lora::0.5>", "names no LoRA"),
    ],
)
def test_bad_lora_tags_are_refused(prompt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        find_lora_tags(prompt)


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ("a cat AND a dog", "`AND` (mixing two prompts"),
        ("a [cat:dog:0.5] on a sofa", "`[cat:dog:0.5]` (switching words during the steps"),
        ("a [cat::10]", "`[cat::10]` (switching words"),
        ("a (red [cat:dog:4]:1.2)", "`[cat:dog:4]`"),
        ("a [cat|dog]", "`[cat|dog]` (alternating words"),
    ],
)
def test_unsupported_syntax_is_refused_naming_it(prompt: str, named: str) -> None:
    with pytest.raises(ValueError) as info:
        check_supported(prompt)
    assert str(info.value).startswith("prompt: " + named), info.value
    assert "not supported here" in str(info.value)
    # Refused by the request check (before any job is queued), under the field's name.
    with pytest.raises(ValueError, match=r"^negative_prompt: "):
        check_prompt_syntax(prompt, "negative_prompt")


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat and a dog",
        "BANDIT, ANDROID",
        "a (cat:1.2) [dog]",
        "[(cat:1.2)]",
        "\\[cat:dog\\]",
        "[<lora:ink:0.5>]",
        "a cat: sitting | still",
    ],
)
def test_supported_text_passes(prompt: str) -> None:
    check_supported(prompt)


def test_break_is_dropped_and_reported() -> None:
    assert drop_break("a castle BREAK a red sky") == ("a castle a red sky", True)
    assert drop_break("BREAKFAST at a castle, break") == ("BREAKFAST at a castle, break", False)
