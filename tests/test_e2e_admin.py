"""/admin, /queue and /cancel end to end: pause survives restarts, bans, blocked words, stats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e_harness import answer, ephemeral, running, text_of, wait_result
from tests.fake_discord import InteractionRecord, RecordedEvent


async def wait_content(it: InteractionRecord, fragment: str, timeout: float = 60) -> RecordedEvent:
    """Wait for an edit of the interaction's reply whose content holds ``fragment``."""
    return await it.wait_for(
        lambda e: e.kind == "edit_original" and fragment in str(e.payload.get("content")),
        timeout=timeout,
    )


async def test_non_admins_are_refused_every_admin_command(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        commands = [
            ("admin pause", {}),
            ("admin resume", {}),
            ("admin ban", {"user": world.bob}),
            ("admin unban", {"user": world.bob}),
            ("admin block", {"word": "cat"}),
            ("admin unblock", {"word": "cat"}),
            ("admin blocked", {}),
            ("admin stats", {}),
            ("admin workers", {}),
        ]
        for command, options in commands:
            reply = await answer(await world.slash(world.alice, command, options))
            assert ephemeral(reply) and reply.data["content"] == (
                "Only server admins can use this command."
            ), (command, reply.payload)
        assert not bot.executor.queue.paused
        assert await bot.storage.blocked_words.list_blocked_words() == []
        assert await bot.storage.users.get_user(world.bob.id) is None


async def test_only_admin_commands_are_hidden_from_members(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        synced = world.fake.registered_commands[world.guild.id]
        permissions = {c["name"]: c["default_member_permissions"] for c in synced}
        # Manage Server (0x20): Discord lists these only to members holding it.
        assert permissions.pop("admin") == permissions.pop("train") == "32"
        assert permissions and set(permissions.values()) == {None}, permissions
        for name in ("imagine", "lora", "history", "settings", "seed", "queue", "cancel"):
            assert name in permissions
        # Listing is not permission: a member who calls it anyway is still refused.
        reply = await answer(await world.slash(world.alice, "admin stats"))
        assert reply.data["content"] == "Only server admins can use this command."


async def test_listed_admin_without_manage_server_is_allowed(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir, admin_user_ids=[world.bob.id]):
        reply = await answer(await world.slash(world.bob, "admin blocked"))
        assert ephemeral(reply) and "No words are blocked" in reply.data["content"]


async def test_queue_and_cancel_while_paused_and_pause_survives_restart(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        reply = await answer(await world.slash(world.admin, "admin pause"))
        assert ephemeral(reply) and "paused" in reply.data["content"]
        assert bot.executor.queue.paused and await bot.storage.kv.is_queue_paused()

        first = await world.slash(world.alice, "imagine", {"prompt": "alice one"})
        second = await world.slash(world.alice, "imagine", {"prompt": "alice two"})
        bobs = await world.slash(world.bob, "imagine", {"prompt": "bob one"})
        for it in (first, second, bobs):
            await wait_content(it, "Queued")

        shown = await answer(await world.slash(world.alice, "queue"))
        text = text_of(shown)
        assert ephemeral(shown) and "paused" in text and "Waiting (3)" in text
        assert "job 1: position 1" in text and "job 2: position 3" in text
        assert "alice one" in text and "bob one" in text and "job 3" in text
        shown = await answer(await world.slash(world.bob, "queue"))
        assert "job 3: position 2" in text_of(shown) and "job 1: position" not in text_of(shown)

        reply = await answer(await world.slash(world.alice, "cancel"))
        assert ephemeral(reply) and "Removed from the queue: jobs 1, 2." in reply.data["content"]
        for it in (first, second):
            await wait_content(it, "Cancelled")
        assert [job.id for job in bot.executor.queue.order()] == [3]
        reply = await answer(await world.slash(world.alice, "cancel"))
        assert "no jobs waiting or running" in reply.data["content"]

        reply = await answer(await world.slash(world.admin, "admin resume"))
        assert "running again" in reply.data["content"] and not bot.executor.queue.paused
        await wait_result(bobs)

        # /cancel stops the caller's running job at its next step.
        slow = await world.slash(world.alice, "imagine", {"prompt": "a slow one", "steps": 150})
        await wait_content(slow, "step")
        shown = await answer(await world.slash(world.alice, "queue"))
        assert "job 4: running now" in text_of(shown) and "Running now" in text_of(shown)
        reply = await answer(await world.slash(world.alice, "cancel"))
        assert "Job 4 is running and stops at its next step." in reply.data["content"]
        await wait_content(slow, "Cancelled after step")
        assert (await bot.storage.get_job(4)).status == "cancelled"

        await answer(await world.slash(world.admin, "admin pause"))
    # A new process reads the flag back: the queue stays paused until an admin resumes it.
    async with running(world, tiny_model_dir) as bot:
        assert bot.executor.queue.paused
        waiting = await world.slash(world.bob, "imagine", {"prompt": "after restart"})
        await wait_content(waiting, "Queued")
        await answer(await world.slash(world.admin, "admin resume"))
        assert not await bot.storage.kv.is_queue_paused()
        await wait_result(waiting)


async def test_ban_and_blocked_words(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        waiting = await world.slash(world.alice, "imagine", {"prompt": "before the ban"})
        await wait_content(waiting, "Queued")
        reply = await answer(await world.slash(world.admin, "admin ban", {"user": world.alice}))
        assert ephemeral(reply) and "banned" in reply.data["content"]
        assert "1 waiting job" in reply.data["content"]
        await wait_content(waiting, "Cancelled")
        denied = await answer(await world.slash(world.alice, "imagine", {"prompt": "a cat"}))
        assert ephemeral(denied) and "banned" in denied.data["content"]
        assert len(bot.executor.queue) == 0

        reply = await answer(await world.slash(world.admin, "admin ban", {"user": world.admin}))
        assert ephemeral(reply) and "cannot ban yourself" in reply.data["content"]
        reply = await answer(await world.slash(world.admin, "admin unban", {"user": world.bob}))
        assert "not banned" in reply.data["content"]
        reply = await answer(await world.slash(world.admin, "admin unban", {"user": world.alice}))
        assert "can use the bot again" in reply.data["content"]
        allowed = await world.slash(world.alice, "imagine", {"prompt": "a cat"})
        assert (await allowed.wait_callback()).type == 5

        reply = await answer(await world.slash(world.admin, "admin block", {"word": "  Dragon "}))
        assert ephemeral(reply) and "Blocked `dragon`" in reply.data["content"]
        reply = await answer(await world.slash(world.admin, "admin block", {"word": "dragon"}))
        assert "already blocked" in reply.data["content"]
        await answer(await world.slash(world.admin, "admin block", {"word": "gore"}))
        listed = await answer(await world.slash(world.admin, "admin blocked"))
        assert "dragon, gore" in text_of(listed)
        denied = await answer(await world.slash(world.bob, "imagine", {"prompt": "a RED dragon"}))
        assert ephemeral(denied) and "blocked word (dragon)" in denied.data["content"]
        reply = await answer(await world.slash(world.admin, "admin unblock", {"word": "DRAGON"}))
        assert "allowed again" in reply.data["content"]
        reply = await answer(await world.slash(world.admin, "admin unblock", {"word": "dragon"}))
        assert "was not blocked" in reply.data["content"]
        allowed = await world.slash(world.bob, "imagine", {"prompt": "a red dragon"})
        assert (await allowed.wait_callback()).type == 5
        assert await bot.storage.blocked_words.list_blocked_words() == ["gore"]


async def test_stats(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        mine = {"cogs.lora", "cogs.profile", "cogs.queue", "cogs.admin"}
        assert not mine & set(bot.failed_extensions)
        made = await world.slash(world.alice, "imagine", {"prompt": "a tree", "count": 2})
        await wait_result(made)
        for _ in range(50):  # the job row turns 'done' right after the images are sent
            if (await bot.storage.generations.stats()).jobs_served:
                break
            await asyncio.sleep(0.05)
        stats = await answer(await world.slash(world.admin, "admin stats"))
        text = text_of(stats)
        assert ephemeral(stats)
        assert "'Jobs served', 'value': '1 (1 since start)'" in text
        assert "'Images made', 'value': '2'" in text
        assert "0 waiting (running)" in text
        assert bot.generator.model_name in text and "cpu" in text
        assert f"'VRAM preset', 'value': '{bot.generator.preset}'" in text
        assert "dispatcher alive" in text and "GB free" in text and "embeddings:" in text
        workers = await answer(await world.slash(world.admin, "admin workers"))
        shown = text_of(workers)
        assert "Workers (1)" in shown and "1 done" in shown and "cpu" in shown
