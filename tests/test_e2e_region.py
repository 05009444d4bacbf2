"""Vary (Region), Zoom out, Pan and /imagine masks through the fake Discord (tiny model)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cogs._edit_panel import panel_view, picker_view
from cogs._job_views import result_view
from engine.metadata import parse_parameters
from tests.e2e_harness import answer, ephemeral, running, text_of, wait_result
from tests.test_e2e_img2img import png


def params(upload) -> dict:
    with Image.open(io.BytesIO(upload.data)) as image:
        return {"size": image.size, **parse_parameters(image.info["parameters"])}


def rows(components: list[dict]) -> list[list[str]]:
    """The custom ids of each action row of a message payload."""
    return [[c.get("custom_id", "") for c in row["components"]] for row in components]


async def open_panel(world, result, job_id: int):
    """Press Region / Zoom / Pan under a result; return the ephemeral panel's callback event."""
    click = await world.fake.send_component(world.alice, result.message, f"sd:edit:{job_id}")
    panel = await click.wait_callback()
    assert panel.type == 4 and ephemeral(panel)
    return panel


async def test_region_picker_and_prompt_modal_survive_a_restart(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        result = await wait_result(
            await world.slash(world.alice, "imagine", {"prompt": "a red circle", "seed": 5})
        )
        assert "sd:edit:1" in result.message.custom_ids
        panel = await open_panel(world, result, 1)
        layout = rows(panel.data["components"])
        assert layout[0] == ["sde:cells:1:0"] and layout[1] == ["sde:preset:1:0"]
        assert layout[3] == [f"sde:pan{s}:1:0" for s in "lrud"]
        assert "Zoom out 2x" in str(panel.data["components"])
        pick = await world.fake.send_component(
            world.alice, panel.message, "sde:cells:1:0", component_type=3, values=["6", "0", "3"]
        )
        chosen = await pick.wait_callback()
        assert chosen.type == 7  # the panel itself now shows the region and its buttons
        assert rows(chosen.data["components"])[4] == ["sde:go:1:0:036", "sde:prompt:1:0:036"]
        edit = await world.fake.send_component(world.alice, panel.message, "sde:prompt:1:0:036")
        modal = await edit.wait_callback()
        assert modal.type == 9 and modal.data["custom_id"] == "sde:modal:1:0:036"
        assert "a red circle" in str(modal.data["components"])
        source = (await bot.storage.generations.get_generation_by_job(1)).image_paths[0]
    # A new process: the open panel and the open modal still work.
    async with running(world, tiny_model_dir) as bot:
        submit = await world.fake.send_modal_submit(world.alice, edit, {"prompt": "a green circle"})
        assert (await submit.wait_callback()).type == 5
        repainted = await wait_result(submit)
        job2 = await bot.storage.get_job(2)
        assert job2 is not None and job2.request.mask_region == "0,3,6"
        assert job2.request.init_image == source and job2.request.prompt == "a green circle"
        assert job2.request.outpaint is None and job2.request.strength is None
        found = params(repainted.files[0])
        assert found["size"] == (64, 64) and "Mask blur" in found
        assert "sd:edit:2" in repainted.message.custom_ids  # a repaint can be repainted

        go = await world.fake.send_component(world.alice, panel.message, "sde:go:1:0:036")
        await wait_result(go)
        job3 = await bot.storage.get_job(3)
        assert job3 is not None and job3.request.prompt == "a red circle"
        assert job3.request.mask_region == "0,3,6"

        # Repainting the repaint: a named part this time, from image 1 of job 2.
        panel2 = await open_panel(world, repainted, 2)
        pick = await world.fake.send_component(
            world.alice, panel2.message, "sde:preset:2:0", component_type=3, values=["left-half"]
        )
        assert "sde:go:2:0:left-half" in (await pick.wait_callback()).message.custom_ids
        again = await world.fake.send_component(world.alice, panel2.message, "sde:go:2:0:left-half")
        await wait_result(again)
        job4 = await bot.storage.get_job(4)
        generation2 = await bot.storage.generations.get_generation_by_job(2)
        assert job4 is not None and job4.request.mask_region == "left half"
        assert job4.request.init_image == generation2.image_paths[0]
        # A modal cannot answer a modal submit, and the prompt cannot be emptied.
        edit2 = await world.fake.send_component(
            world.alice, panel2.message, "sde:prompt:2:0:left-half"
        )
        await edit2.wait_callback()
        empty = await world.fake.send_modal_submit(world.alice, edit2, {"prompt": "  "})
        reply = await empty.wait_callback()
        assert ephemeral(reply) and "`prompt`" in text_of(reply)
        assert await bot.storage.get_job(5) is None
    assert world.fake.rejections == []


async def test_zoom_and_pan_buttons_queue_outpaints(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        result = await wait_result(
            await world.slash(world.alice, "imagine", {"prompt": "a boat", "count": 2, "seed": 3})
        )
        panel = await open_panel(world, result, 1)
        assert rows(panel.data["components"]) == [["sde:pick:1"]]  # which image first
        pick = await world.fake.send_component(
            world.alice, panel.message, "sde:pick:1", component_type=3, values=["1"]
        )
        assert (await pick.wait_callback()).type == 7
        assert "sde:zoom2:1:1" in panel.message.custom_ids
        paths = (await bot.storage.generations.get_generation_by_job(1)).image_paths

        zoom = await world.fake.send_component(world.bob, panel.message, "sde:zoom2:1:1")
        zoomed = await wait_result(zoom)
        job2 = await bot.storage.get_job(2)
        assert job2 is not None and job2.request.outpaint == "zoom:2"
        assert job2.request.init_image == paths[1] and job2.user_id == world.bob.id
        assert params(zoomed.files[0])["size"] == (64, 64)  # zoom keeps the size

        pan = await world.fake.send_component(world.alice, panel.message, "sde:panl:1:1")
        panned = await wait_result(pan)
        job3 = await bot.storage.get_job(3)
        assert job3 is not None and job3.request.outpaint == "pan:left"
        assert (job3.request.width, job3.request.height) == (96, 64)  # decided at submit
        assert params(panned.files[0])["size"] == (96, 64)  # half a side more, on the left
        ids = panned.message.custom_ids
        assert "sd:edit:3" in ids and "sd:subtle:3" not in ids  # no Subtle after a pan

        # Pan the pan, then U on it: U works on the whole picture (no outpaint carried over).
        panel3 = await open_panel(world, panned, 3)  # two images, as the job it came from
        first = await world.fake.send_component(
            world.alice, panel3.message, "sde:pick:3", component_type=3, values=["0"]
        )
        await first.wait_callback()
        down = await world.fake.send_component(world.alice, panel3.message, "sde:pand:3:0")
        further = await wait_result(down)
        assert params(further.files[0])["size"] == (96, 96)
        up = await world.fake.send_component(world.alice, panned.message, "sd:up:3:0")
        await wait_result(up)
        job5 = await bot.storage.get_job(5)
        assert job5 is not None and job5.request.upscale == 2.0
        assert job5.request.outpaint is None and job5.request.mask_region is None
    assert world.fake.rejections == []


def _mask_png(size: tuple[int, int]) -> bytes:
    """White (repaint) on the left third, black elsewhere."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 3, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_imagine_image_with_a_mask(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        image = world.fake.add_attachment("photo.png", png((96, 96)), "image/png")
        mask = world.fake.add_attachment("mask.png", _mask_png((96, 96)), "image/png")
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a lake", "image": image, "mask": mask}
        )
        result = await wait_result(it)
        job = await bot.storage.get_job(1)
        assert job is not None and job.request.mask_image is not None
        stored = Path(job.request.mask_image)
        assert stored.is_file() and stored.parent.parent.name == "sources"
        with Image.open(stored) as saved:
            assert saved.mode == "L" and saved.size == (64, 64)  # fitted as the source was
        found = params(result.files[0])
        assert found["Denoising strength"] == "1" and "Mask blur" in found
        # Beyond the mask and its blur band the picture is the source's own pixels.
        with Image.open(io.BytesIO(result.files[0].data)) as out:
            made = np.asarray(out.convert("RGB"), dtype=int)
        with Image.open(job.request.init_image) as src:
            kept = np.asarray(src.convert("RGB"), dtype=int)
        assert np.abs(made[:, 40:] - kept[:, 40:]).max() <= 1
        assert np.abs(made[:, :16] - kept[:, :16]).max() > 10  # the white part was repainted

        alone = world.fake.add_attachment("mask.png", _mask_png((64, 64)), "image/png")
        reply = await answer(
            await world.slash(world.alice, "imagine", {"prompt": "x", "mask": alone})
        )
        assert ephemeral(reply) and "`mask` only applies with an `image`" in text_of(reply)
        black = world.fake.add_attachment("black.png", _mask_png((2, 64)), "image/png")
        picture = world.fake.add_attachment("p.png", png(), "image/png")
        options = {"prompt": "x", "image": picture, "mask": black}
        reply = await answer(await world.slash(world.alice, "imagine", options))
        assert ephemeral(reply) and "all black" in text_of(reply)
        text = world.fake.add_attachment("notes.txt", b"hello", "text/plain")
        options = {"prompt": "x", "image": picture, "mask": text}
        reply = await answer(await world.slash(world.alice, "imagine", options))
        assert ephemeral(reply) and "not a PNG" in text_of(reply)
        assert await bot.storage.get_job(2) is None


def test_buttons_fit_in_five_rows_for_every_result() -> None:
    requests = [
        {"width": 512, "height": 512},
        {"width": 1024, "height": 1024, "init_image": "x.png", "upscale": 2.0},
        {"width": 512, "height": 512, "init_image": "x.png", "strength": 0.6},
        {"width": 512, "height": 512, "init_image": "x.png", "mask_region": "0"},
        {"width": 768, "height": 512, "init_image": "x.png", "outpaint": "pan:left"},
        {"width": 512, "height": 512, "draft": True},
    ]
    for request in requests:
        for count in range(1, 9):
            layout = result_view(7, request, count).to_components()
            assert len(layout) <= 5 and all(len(r["components"]) <= 5 for r in layout)
            assert any(c["custom_id"] == "sd:edit:7" for r in layout for c in r["components"])
    for view in (panel_view(7, 0), panel_view(7, 7, "012345678"), picker_view(7, 8)):
        layout = view.to_components()
        assert len(layout) <= 5 and all(len(r["components"]) <= 5 for r in layout)
        assert all(len(c["custom_id"]) <= 100 for r in layout for c in r["components"])


async def test_a_repaint_runs_on_the_listed_inpainting_model(
    world, tmp_path: Path, monkeypatch
) -> None:
    from tests.tiny_sd import save_tiny_inpainting_pipeline, save_tiny_pipeline

    plain = save_tiny_pipeline(tmp_path / "plain")
    fill = save_tiny_inpainting_pipeline(tmp_path / "fill", seed=3)
    monkeypatch.setenv("MODEL_CHOICES", f"fill={fill}")
    async with running(world, plain) as bot:
        result = await wait_result(
            await world.slash(world.alice, "imagine", {"prompt": "a boat", "seed": 3})
        )
        assert (await bot.storage.get_job(1)).request.model == "plain"
        panel = await open_panel(world, result, 1)
        panned = await wait_result(
            await world.fake.send_component(world.alice, panel.message, "sde:panl:1:0")
        )
        job2 = await bot.storage.get_job(2)
        assert job2 is not None and job2.request.model == "fill"  # stored: restart-safe
        assert params(panned.files[0])["Model"] == "fill"
        # A model the user picked in /settings is honoured.
        await answer(await world.slash(world.bob, "settings set", {"model": "plain"}))
        await wait_result(await world.fake.send_component(world.bob, panel.message, "sde:panr:1:0"))
        job3 = await bot.storage.get_job(3)
        assert job3 is not None and job3.request.model == "plain"
    assert world.fake.rejections == []
