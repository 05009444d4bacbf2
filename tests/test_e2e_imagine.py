"""/imagine end to end over the wire: defer, progress edits, final PNGs, buttons, fairness."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from engine.metadata import parse_parameters
from tests.e2e_harness import running, wait_result


async def test_imagine_from_defer_to_images(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        # 30 steps: a 3-step tiny job can end within one 0.2 s edit interval, and the messenger
        # then rightly drops the coalesced progress edit (the test depended on machine speed).
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a red castle", "seed": 5, "count": 2, "steps": 30}
        )
        assert (await it.wait_callback()).type == 5
        result = await wait_result(it)
        edits = [e for e in it.events if e.kind == "edit_original"]
        texts = [e.payload.get("content") or "" for e in edits]
        assert any("Queued" in t or "step" in t for t in texts[:-1])
        assert any("step" in t for t in texts)
        names = [f.filename for f in result.files]
        assert names == [f"job1-{i}.png" for i in range(2)]
        for index, upload in enumerate(result.files):
            assert upload.data[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(io.BytesIO(upload.data)) as image:
                params = parse_parameters(image.info["parameters"])
                assert image.size == (64, 64)
            assert params["prompt"] == "a red castle" and params["Seed"] == str(5 + index)
        embed = result.payload["embeds"][0]
        assert "`5`, `6`" in str(embed)
        custom_ids = str(result.payload.get("components"))
        for action in ("reroll", "var", "seed", "del"):
            assert f"sd:{action}:1" in custom_ids
        # The seeds are recorded for /seed and the image files are on disk.
        generation = await world.bot.storage.generations.get_generation_by_job(1)
        assert generation is not None and list(generation.seeds) == [5, 6]
        assert all(Path(p).is_file() for p in generation.image_paths)


def png_seed(upload) -> int:
    with Image.open(io.BytesIO(upload.data)) as image:
        return int(parse_parameters(image.info["parameters"])["Seed"])


async def test_result_buttons(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a blue house", "seed": 40})
        result = await wait_result(it)
        message = result.message
        assert message is not None

        reroll = await world.fake.send_component(world.alice, message, "sd:reroll:1")
        assert (await reroll.wait_callback()).type == 5
        rerolled = await wait_result(reroll)
        assert png_seed(rerolled.files[0]) != 40

        variations = await world.fake.send_component(world.bob, message, "sd:var:1")
        varied = await wait_result(variations)
        assert png_seed(varied.files[0]) == 41  # the seed right after this image's
        job3 = await bot.storage.get_job(3)
        assert job3 is not None and job3.user_id == world.bob.id

        reuse = await world.fake.send_component(world.bob, message, "sd:seed:1")
        answer = await reuse.wait_callback()
        assert "40" in answer.data["content"] and answer.data["flags"] & 64
        profile = await bot.storage.users.get_user(world.bob.id)
        assert profile is not None and profile.fixed_seed == 40

        refused = await world.fake.send_component(world.bob, message, "sd:del:1")
        denied = await refused.wait_callback()
        assert "Only the person" in denied.data["content"] and not message.deleted
        delete = await world.fake.send_component(world.alice, message, "sd:del:1")
        await delete.wait_followup()
        assert message.deleted


async def test_cancel_button_while_waiting_and_running(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        slow = await world.slash(world.alice, "imagine", {"prompt": "a slow castle", "steps": 150})
        waiting = await world.slash(world.bob, "imagine", {"prompt": "a dog"})
        queued = await waiting.wait_for(
            lambda e: e.kind == "edit_original" and "sd:cancel:2" in str(e.payload)
        )
        assert "position 2" in queued.payload["content"]
        click = await world.fake.send_component(world.bob, queued.message, "sd:cancel:2")
        assert "Removed from the queue" in (await click.wait_callback()).data["content"]
        await waiting.wait_for(lambda e: "removed from the queue" in str(e.payload.get("content")))
        bot.executor.resume()
        running_edit = await slow.wait_for(
            lambda e: e.kind == "edit_original" and "step" in str(e.payload.get("content"))
        )
        intruder = await world.fake.send_component(world.bob, running_edit.message, "sd:cancel:1")
        assert "Only the person" in (await intruder.wait_callback()).data["content"]
        click = await world.fake.send_component(world.alice, running_edit.message, "sd:cancel:1")
        assert "Stopping" in (await click.wait_callback()).data["content"]
        await slow.wait_for(
            lambda e: "Cancelled after step" in str(e.payload.get("content")), timeout=60
        )
        assert (await bot.storage.get_job(1)).status == "cancelled"


async def test_two_users_are_served_fairly(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        records = []
        for n in range(3):
            records.append(
                ("alice", await world.slash(world.alice, "imagine", {"prompt": f"alice {n}"}))
            )
        records.append(("bob", await world.slash(world.bob, "imagine", {"prompt": "bob 0"})))
        for _, record in records:
            await record.wait_callback()
        bot.executor.resume()
        finished = []
        for who, record in records:
            event = await wait_result(record)
            finished.append((event.at, who))
        order = [who for _, who in sorted(finished)]
        assert order == ["alice", "bob", "alice", "alice"]


async def test_refusals_are_ephemeral_and_queue_nothing(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir, cooldown_s=600) as bot:
        await bot.storage.blocked_words.add_blocked_word("gore")
        await bot.storage.users.get_or_create_user(world.bob.id)
        await bot.storage.users.set_banned(world.bob.id, True)
        cases = [
            (world.bob, {"prompt": "a cat"}, "banned"),
            (world.alice, {"prompt": "a cat with gore"}, "blocked word"),
            (world.alice, {"prompt": "a cat", "size": "gigantic"}, "Unknown size"),
            (
                world.alice,
                {"prompt": "a cat", "sampler": "Warp"},
                "`sampler`: unknown sampler 'Warp'",
            ),
        ]
        for user, options, expected in cases:
            it = await world.slash(user, "imagine", options)
            reply = await it.wait_callback()
            assert reply.type == 4 and reply.data["flags"] & 64, reply.payload
            assert expected in reply.data["content"]
        first = await world.slash(world.alice, "imagine", {"prompt": "a cat"})
        assert (await first.wait_callback()).type == 5
        again = await world.slash(world.alice, "imagine", {"prompt": "a cat"})
        reply = await again.wait_callback()
        assert "Slow down" in reply.data["content"] and reply.data["flags"] & 64
        jobs = await bot.storage.jobs_for_user(world.alice.id)
        assert len(jobs) == 1


async def test_nsfw_prompt_is_spoilered_outside_nsfw_channels(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        public = await world.slash(world.alice, "imagine", {"prompt": "a nude statue", "seed": 1})
        result = await wait_result(public)
        assert all(f.filename.startswith("SPOILER_") for f in result.files)
        private = await world.slash(
            world.alice, "imagine", {"prompt": "a nude statue", "seed": 1}, channel=world.nsfw
        )
        result = await wait_result(private)
        assert not any(f.filename.startswith("SPOILER_") for f in result.files)


async def test_waiting_job_is_delivered_after_restart(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a patient castle", "seed": 9})
        await it.wait_for(
            lambda e: e.kind == "edit_original" and "Queued" in str(e.payload.get("content"))
        )
    # The bot stopped with the job waiting; a new process picks it up and edits the same reply.
    async with running(world, tiny_model_dir) as bot:
        result = await wait_result(it)
        assert png_seed(result.files[0]) == 9
        await bot.outbox.wait_idle()  # "done" is written after Discord answers the edit
        assert (await bot.storage.get_job(1)).status == "done"


async def test_reconnect_mid_job_still_delivers(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a stormy sea", "steps": 40, "seed": 3}
        )
        await it.wait_for(lambda e: "step" in str(e.payload.get("content")))
        await world.fake.send_reconnect()
        await world.fake.wait_resumed()
        result = await wait_result(it)
        assert png_seed(result.files[0]) == 3
        after = await world.slash(world.bob, "imagine", {"prompt": "a calm sea"})
        assert (await after.wait_callback()).type == 5


async def test_expired_token_posts_to_the_channel_with_a_mention(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a late castle", "seed": 2})
        await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
        job = bot.executor.queue.order()[0]
        job.reference["created"] -= 16 * 60  # pretend 16 minutes passed, for the bot
        world.fake.expire_interaction(it)  # and for Discord: the token is refused from now on
        bot.executor.resume()
        for _ in range(600):
            posted = [
                m
                for m in world.fake.channel_messages
                if m.attachments and m.attachments[0].filename.startswith("job")
            ]
            if posted:
                break
            await __import__("asyncio").sleep(0.1)
        assert posted, "no channel message with the images"
        assert f"<@{world.alice.id}>" in posted[0].content
        assert posted[0].attachments[0].data[:8] == b"\x89PNG\r\n\x1a\n"


async def test_draft_over_the_wire_and_u_v_give_full_quality(
    world, tiny_model_dir: Path, tiny_lora_b: Path
) -> None:
    async with running(world, tiny_model_dir, generation={"draft_lora": str(tiny_lora_b)}) as bot:
        it = await world.slash(
            world.alice,
            "imagine",
            {"prompt": "a quick castle", "draft": True, "seed": 4, "count": 2, "negative": "dog"},
        )
        result = await wait_result(it)
        with Image.open(io.BytesIO(result.files[0].data)) as image:
            params = parse_parameters(image.info["parameters"])
        assert params["Sampler"] == "LCM" and params["Steps"] == "4" and params["CFG scale"] == "1"
        assert params["Draft"] == "LCM-LoRA"
        content = result.payload["content"]
        assert "Draft" in content and "U and V on it give full quality" in content
        assert "negative prompt is not used at CFG 1" in content
        assert "sd:up:1:1" in str(result.payload.get("components"))

        # U on a draft: the full-quality render of that image's seed and prompt, said so.
        up = await world.fake.send_component(world.alice, result.message, "sd:up:1:1")
        full = await wait_result(up)
        job2 = await bot.storage.get_job(2)
        assert job2 is not None and job2.request.draft is False
        assert job2.request.init_image is None and job2.request.num_images == 1
        with Image.open(io.BytesIO(full.files[0].data)) as image:
            params = parse_parameters(image.info["parameters"])
        assert params["Seed"] == "5" and params["Steps"] == "3" and "Draft" not in params
        assert "Full-quality render of draft image 2" in full.payload["content"]
        assert "U and V on it" not in full.payload["content"]

        # V on a draft: a full-quality variation of the draft image.
        vary = await world.fake.send_component(world.alice, result.message, "sd:vary:1:0")
        await wait_result(vary)
        job3 = await bot.storage.get_job(3)
        assert job3 is not None and job3.request.draft is False and job3.request.init_image

        # Reroll on a draft stays a draft.
        reroll = await world.fake.send_component(world.alice, result.message, "sd:reroll:1")
        await wait_result(reroll)
        job4 = await bot.storage.get_job(4)
        assert job4 is not None and job4.request.draft is True


async def test_cpu_host_drafts_by_default(world, tiny_model_dir: Path, tiny_lora_b: Path) -> None:
    settings = {"draft_lora": str(tiny_lora_b), "draft_default": "auto"}
    async with running(world, tiny_model_dir, generation=settings) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a castle", "seed": 1})
        result = await wait_result(it)
        job = await bot.storage.get_job(1)
        assert job is not None and job.request.draft is True  # the tiny model runs on the CPU
        assert "Draft" in result.payload["content"]
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a castle", "seed": 1, "draft": False}
        )
        await wait_result(it)
        job = await bot.storage.get_job(2)
        assert job is not None and job.request.draft is False


async def test_demo_model_draws_what_was_asked(world) -> None:
    import numpy as np

    from engine.pipeline import DEMO_MODEL_DIR

    demo_settings = {"num_inference_steps": 20, "guidance_scale": 5.0, "negative_prompt": ""}
    async with running(world, DEMO_MODEL_DIR, generation=demo_settings) as bot:
        assert bot.generator.model_defaults["width"] == 64
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a red circle on a blue background", "seed": 1}
        )
        result = await wait_result(it)
        with Image.open(io.BytesIO(result.files[0].data)) as png:
            pixels = np.asarray(png.convert("RGB")).astype(int)
    assert pixels.shape == (64, 64, 3)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    red = (r > 150) & (g < 90) & (b < 90)
    assert red.mean() > 0.05, "no red shape in the picture"
    border = np.concatenate([pixels[:4].reshape(-1, 3), pixels[-4:].reshape(-1, 3)])
    blue = (border[:, 2] > border[:, 0] + 40) & (border[:, 2] > border[:, 1] + 40)
    assert blue.mean() > 0.8, "the background is not blue"
