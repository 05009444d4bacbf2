"""img2img through Discord: an attachment, U/V buttons on results, refusals (fake Discord)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from engine.metadata import parse_parameters
from tests.e2e_harness import answer, ephemeral, running, text_of, wait_result


def png(size: tuple[int, int] = (96, 64)) -> bytes:
    """A red square on blue as PNG bytes."""
    image = Image.new("RGB", size, (30, 70, 220))
    image.paste((220, 30, 30), (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def params(upload) -> dict:
    with Image.open(io.BytesIO(upload.data)) as image:
        return {"size": image.size, **parse_parameters(image.info["parameters"])}


async def test_attachment_img2img(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        source = world.fake.add_attachment("photo.png", png(), "image/png")
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a green house", "image": source, "strength": 0.5}
        )
        result = await wait_result(it)
        (upload,) = result.files
        found = params(upload)
        assert found["Denoising strength"] == "0.5"
        assert found["size"][0] > found["size"][1]  # the 3:2 picture stays landscape
        job = await bot.storage.get_job(1)
        assert job is not None
        stored = Path(job.request.init_image)
        assert stored.is_file() and stored.parent.parent.name == "sources"
        assert len(stored.stem) == 64  # named by its sha256
        # The same picture again is stored once.
        again = world.fake.add_attachment("copy.png", png(), "image/png")
        it2 = await world.slash(world.alice, "imagine", {"prompt": "a cat", "image": again})
        await wait_result(it2)
        job2 = await bot.storage.get_job(2)
        assert job2 is not None and job2.request.init_image == str(stored)
        assert job2.request.strength == 0.6
        # Subtle / Strong repaint the same source again at 0.35 / 0.7 with a new seed.
        assert "sd:subtle:1" in str(result.payload["components"])
        strong = await world.fake.send_component(world.alice, result.message, "sd:strong:1")
        stronger = await wait_result(strong)
        assert params(stronger.files[0])["Denoising strength"] == "0.7"
        job3 = await bot.storage.get_job(3)
        assert job3 is not None and job3.request.init_image == str(stored)


async def test_u_and_v_buttons_on_a_four_image_result(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a tower", "count": 4, "seed": 9})
        result = await wait_result(it)
        ids = result.message.custom_ids
        for i in range(4):
            assert f"sd:up:1:{i}" in ids and f"sd:vary:1:{i}" in ids
        assert "sd:var:1" in ids and "Next seeds" in str(result.payload["components"])
        assert len(result.payload["components"]) == 3  # U row, V row, the job's row

        upscale = await world.fake.send_component(world.bob, result.message, "sd:up:1:1")
        big = await wait_result(upscale)
        (upload,) = big.files
        found = params(upload)
        assert found["size"] == (128, 128)
        assert found["Seed"] == "10"  # image 2's seed
        assert found["Hires upscale"] == "2" and found["Denoising strength"] == "0.35"
        assert (
            "sd:vary:2:0" in big.message.custom_ids and "sd:reroll:2" not in big.message.custom_ids
        )

        vary = await world.fake.send_component(world.alice, result.message, "sd:vary:1:0")
        varied = await wait_result(vary)
        job3 = await bot.storage.get_job(3)
        generation = await bot.storage.generations.get_generation_by_job(1)
        assert job3 is not None and generation is not None
        assert job3.request.init_image == generation.image_paths[0]
        assert params(varied.files[0])["Denoising strength"] == "0.6"
        assert params(varied.files[0])["Seed"] != "9"


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


async def test_history_lists_newest_first_and_opens_with_u_and_v(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir):
        for prompt in ("an old castle", "a new castle"):
            await wait_result(await world.slash(world.alice, "imagine", {"prompt": prompt}))
        page = await world.slash(world.alice, "history")
        shown = await page.wait_callback()
        assert shown.type == 4 and shown.data["flags"] & 64  # only alice sees it
        text = str(shown.data["embeds"])
        assert text.index("a new castle") < text.index("an old castle")
        assert shown.files and shown.files[0].filename == "history.png"
        assert "sdh:open:2" in str(shown.data["components"])
        empty = await world.slash(world.bob, "history")
        assert "no images yet" in (await empty.wait_callback()).data["content"]
        message = shown.message if shown.message is not None else page.original
        opened = await world.fake.send_component(world.alice, message, "sdh:open:2")
        reply = await opened.wait_callback()
        assert reply.files and reply.files[0].filename == "job2-0.png"
        buttons = str(reply.data["components"])
        assert "sd:vary:2:0" in buttons and "sd:up:2:0" in buttons
        # Delete on this ephemeral copy dismisses it (a channel DELETE would get 404).
        assert reply.message is not None and "sd:del:2" in buttons
        dismiss = await world.fake.send_component(world.alice, reply.message, "sd:del:2")
        assert (await dismiss.wait_callback()).type == 6
        await dismiss.wait_kind("delete_original")
        assert reply.message.deleted and not message.deleted
        stranger = await world.fake.send_component(world.bob, message, "sdh:open:2")
        assert "not in your history" in (await stranger.wait_callback()).data["content"]
