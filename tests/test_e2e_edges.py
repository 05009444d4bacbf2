"""Every interaction gets an answer: full queues on buttons, double deletes, failing
autocompletes, a stopped engine's health, and the NSFW withhold and safety-checker paths."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e_harness import answer, ephemeral, running, wait_result


async def test_buttons_answer_expected_refusals(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir, queue={"per_user_cap": 1}) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a blue house", "seed": 40})
        result = await wait_result(it)
        message = result.message
        assert message is not None
        bot.executor.pause()
        waiting = await world.slash(world.bob, "imagine", {"prompt": "a queue filler"})
        assert (await waiting.wait_callback()).type == 5
        # Bob's queue is full: his Reroll gets a plain ephemeral refusal, not "interaction failed".
        reroll = await world.fake.send_component(world.bob, message, "sd:reroll:1")
        refused = await reroll.wait_callback()
        assert refused.type == 4 and ephemeral(refused)
        assert "limit is 1" in refused.data["content"]
        assert len(bot.executor.snapshot().waiting) == 1
        # Two Delete presses: the second one says the message is gone.
        first = await world.fake.send_component(world.alice, message, "sd:del:1")
        assert "Deleted" in (await first.wait_followup()).data["content"]
        second = await world.fake.send_component(world.alice, message, "sd:del:1")
        late = await second.wait_followup()
        assert "already deleted" in late.data["content"] and ephemeral(late)


async def test_failing_autocomplete_answers_with_no_choices(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:

        async def broken(*args, **kwargs):
            raise RuntimeError("database is locked")

        bot.storage.loras.lora_names = broken  # type: ignore[method-assign]
        complete = await world.fake.send_autocomplete(
            world.alice, world.general, "lora use", {"name": "ink"}, focused="name"
        )
        assert await complete.wait_choices() == []


async def test_withhold_mode_keeps_flagged_images_out_of_public_channels(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, nsfw_mode="withhold") as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a nude statue", "seed": 1})
        final = await it.wait_for(
            lambda e: e.kind == "edit_original" and "flagged as NSFW" in str(e.payload)
        )
        assert not final.files
        # The safety checker's flag (not a word in the prompt) takes the same path.
        original_run = bot.generator.run

        def flagged_run(*args, **kwargs):
            result = original_run(*args, **kwargs)
            result.nsfw = [True] * len(result.images)
            return result

        bot.generator.run = flagged_run  # type: ignore[method-assign]
        checked = await world.slash(world.bob, "imagine", {"prompt": "a calm lake", "seed": 2})
        hidden = await checked.wait_for(
            lambda e: e.kind == "edit_original" and "flagged as NSFW" in str(e.payload)
        )
        assert not hidden.files
        shown = await world.slash(
            world.bob, "imagine", {"prompt": "a calm lake", "seed": 3}, channel=world.nsfw
        )
        result = await wait_result(shown)
        assert result.files and not result.files[0].filename.startswith("SPOILER_")


async def test_stats_report_a_stopped_dispatcher(
    world, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduling import affinity

    def broken_pick(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the dispatcher")

    async with running(world, tiny_model_dir) as bot:
        monkeypatch.setattr(affinity, "pick", broken_pick)  # the next pick ends the loop
        await world.slash(world.alice, "imagine", {"prompt": "a castle"})
        deadline = asyncio.get_running_loop().time() + 30
        while bot.executor.dispatcher_alive:
            assert asyncio.get_running_loop().time() < deadline, "the dispatcher never stopped"
            await asyncio.sleep(0.05)
        stats = await answer(await world.slash(world.admin, "admin stats"))
        assert "STOPPED" in str(stats.data)


async def test_command_acknowledged_before_a_crash_is_answered_at_start(
    world, tiny_model_dir: Path
) -> None:
    from botcore.acks import ACK_PREFIX, answer_orphaned_acks

    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a deferred castle"})
        assert (await it.wait_callback()).type == 5
        # What /train leaves behind when the process dies between its defer and its job write.
        record = {
            "app_id": bot.application_id,
            "token": it.token,
            "created": __import__("time").time(),
            "channel_id": world.general.id,
            "user_id": world.alice.id,
            "command": "train",
        }
        await bot.storage.kv.set(f"{ACK_PREFIX}{it.id}", record)
        assert await answer_orphaned_acks(bot, bot.storage) == 1
        told = await it.wait_for(lambda e: "before your `/train` was queued" in str(e.payload))
        assert "run it again" in told.payload["content"]
        assert await bot.storage.kv.with_prefix(ACK_PREFIX) == {}
