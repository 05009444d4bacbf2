"""img2img through Discord: an attachment, U/V buttons on results, refusals (fake Discord)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e_harness import answer, ephemeral, running, text_of


async def test_non_image_attachment_is_refused(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        text = world.fake.add_attachment("notes.txt", b"hello", "text/plain")
        reply = await answer(
            await world.slash(world.alice, "imagine", {"prompt": "x", "image": text})
        )
        assert ephemeral(reply) and "not a PNG, JPEG, WebP, BMP or GIF" in text_of(reply)
        fake_png = world.fake.add_attachment("fake.png", b"just text" * 10, "image/png")
        reply = await answer(
            await world.slash(world.alice, "imagine", {"prompt": "x", "image": fake_png})
        )
        assert ephemeral(reply) and "not usable as an image" in text_of(reply)
        assert await bot.storage.get_job(1) is None  # nothing was queued
