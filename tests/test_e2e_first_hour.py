"""What a new member meets first (issue 20): sizes, img2img sizes, cooldowns, prompt syntax."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from cogs._checks import UserFacingError
from cogs._imagine_options import pick_size
from engine.img2img import cover
from engine.metadata import parse_parameters
from tests.e2e_harness import running, wait_result

CHOICES = {"square": (64, 64), "portrait": (64, 96), "large square": (96, 96)}


def size_of(upload) -> tuple[int, int]:
    with Image.open(io.BytesIO(upload.data)) as image:
        return image.size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("Large Square", (96, 96)),
        ("  PORTRAIT ", (64, 96)),
        ("large_square", (96, 96)),
        ("64x64", (64, 64)),
        ("512 X 768", (512, 768)),
        ("72×2048", (72, 2048)),
    ],
)
def test_size_names_any_case_and_pixels(text: str, size: tuple[int, int]) -> None:
    assert pick_size(text, CHOICES) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gigantic", "Unknown size `gigantic`: choose one of square (64×64), portrait (64×96)"),
        ("65x64", "The size 65×64 is not possible: each side must be a multiple of 8"),
        ("56x64", "from 64 to 2048 pixels"),
        ("64x2056", "The size 64×2056 is not possible"),
    ],
)
def test_bad_sizes_are_refused_plainly(text: str, message: str) -> None:
    with pytest.raises(UserFacingError) as info:
        pick_size(text, CHOICES)
    assert message in str(info.value)


def test_cover_crops_to_the_shape_then_resizes() -> None:
    image = Image.new("RGB", (90, 60), (0, 0, 255))
    image.paste((255, 0, 0), (30, 0, 60, 60))  # a red band in the middle third
    out = cover(image, 64, 96)
    assert out.size == (64, 96)
    # Centre-cropped (40×60 of the middle), not squashed: the band fills most of the width.
    red = sum(1 for x in range(64) if out.getpixel((x, 48))[0] > 200)
    assert red > 40


async def test_sizes_by_name_in_any_case_and_by_pixels(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        for size, expected in (("PORTRAIT", (64, 96)), ("72x64", (72, 64))):
            it = await world.slash(world.alice, "imagine", {"prompt": "a cat", "size": size})
            assert size_of((await wait_result(it)).files[0]) == expected
        it = await world.slash(world.alice, "imagine", {"prompt": "a cat", "size": "70x64"})
        reply = await it.wait_callback()
        assert reply.data["flags"] & 64 and "multiple of 8" in reply.data["content"]
        it = await world.slash(world.bob, "settings set", {"size": "Landscape"})
        await it.wait_callback()
        profile = await bot.storage.users.get_user(world.bob.id)
        assert profile is not None and (profile.width, profile.height) == (96, 64)
        assert len(await bot.storage.jobs_for_user(world.alice.id)) == 2


def landscape_png() -> bytes:
    image = Image.new("RGB", (96, 64), (30, 70, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_img2img_honours_the_size_chosen(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        photo = world.fake.add_attachment("wide.png", landscape_png(), "image/png")
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a house", "image": photo, "size": "portrait"}
        )
        assert size_of((await wait_result(it)).files[0]) == (64, 96)
        # Without a size the picture keeps its own shape, near the model's pixel count.
        again = world.fake.add_attachment("wide2.png", landscape_png(), "image/png")
        it = await world.slash(world.alice, "imagine", {"prompt": "a house", "image": again})
        assert size_of((await wait_result(it)).files[0]) == (72, 64)


async def test_reroll_and_the_other_buttons_wait_for_the_cooldown(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, cooldown_s=600) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a tower", "seed": 3})
        message = (await wait_result(it)).message
        for custom_id in ("sd:reroll:1", "sd:var:1", "sd:vary:1:0", "sd:up:1:0"):
            click = await world.fake.send_component(world.alice, message, custom_id)
            reply = await click.wait_callback()
            assert reply.data["flags"] & 64, custom_id
            assert "Slow down: you can make new images again in" in reply.data["content"]
        assert len(await bot.storage.jobs_for_user(world.alice.id)) == 1
        # Reuse seed makes nothing, so it is not held back; an admin is never held back.
        click = await world.fake.send_component(world.alice, message, "sd:seed:1")
        assert "fixed seed" in (await click.wait_callback()).data["content"]
        click = await world.fake.send_component(world.admin, message, "sd:reroll:1")
        await wait_result(click)


async def test_unsupported_prompt_syntax_is_refused_before_queueing(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        for prompt, named in (("a cat AND a dog", "`AND`"), ("a [cat:dog:0.5]", "[cat:dog:0.5]")):
            it = await world.slash(world.alice, "imagine", {"prompt": prompt})
            reply = await it.wait_callback()
            assert reply.type == 4 and reply.data["flags"] & 64
            assert named in reply.data["content"] and "not supported" in reply.data["content"]
        assert await bot.storage.jobs_for_user(world.alice.id) == []
        # BREAK is common in copied prompts: drawn without it, and the result says so.
        it = await world.slash(world.alice, "imagine", {"prompt": "a cat BREAK a red sky"})
        result = await wait_result(it)
        assert "`BREAK` in the prompt is not supported here and was ignored" in str(
            result.payload.get("content")
        )
        with Image.open(io.BytesIO(result.files[0].data)) as image:
            assert parse_parameters(image.info["parameters"])["prompt"] == "a cat BREAK a red sky"
