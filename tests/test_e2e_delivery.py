"""Durable delivery over the wire: 5xx bursts, 429s, hung uploads, deleted messages, restarts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from scheduling.events import Finished
from tests.e2e_harness import World, is_result, running, wait_result
from tests.fake_discord import Routes
from tests.fake_discord.faults import matches
from tests.fake_discord.models import FakeMessage


def result_messages(world: World) -> list[FakeMessage]:
    """Channel messages that carry a job's images (what people see posted)."""
    return [
        m
        for m in world.fake.channel_messages
        if m.attachments and m.attachments[0].filename.startswith("job") and not m.deleted
    ]


def result_posts(world: World) -> list[str]:
    """How the fake took each result post that reached it: a new message or the nonce's one."""
    return [
        e.kind
        for e in world.fake.events.events
        if e.kind in ("channel_message", "duplicate_channel_message")
        and e.files
        and e.files[0].filename.startswith("job")
    ]


def is_channel_upload(request) -> bool:
    """A channel post with files: the result, not the text-only progress message."""
    return matches(Routes.CREATE_MESSAGE, request) and request.content_type.startswith("multipart/")


async def wait_until(predicate, timeout: float = 90.0) -> None:
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def delivered(bot, job_id: int) -> bool:
    job = await bot.storage.get_job(job_id)
    return job is not None and job.status == "done" and job.delivered


async def test_result_survives_a_5xx_burst_and_429s(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.outbox.first_backoff_s = 0.05
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a stubborn castle", "seed": 8})
        await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
        await bot.messenger.finalize(1)  # no progress edits: every fault hits the result
        # Six 503s in a row (more than discord.py's own five tries), then two 429s.
        burst = world.fake.fail(6, status=503, route=Routes.EDIT_WEBHOOK_MESSAGE)
        world.fake.rate_limit(2, retry_after=0.2, route=Routes.EDIT_WEBHOOK_MESSAGE)
        bot.executor.resume()
        result = await wait_result(it)
        assert result.files[0].data[:8] == b"\x89PNG\r\n\x1a\n"  # rewound: never an empty upload
        await bot.outbox.wait_idle()
        assert await delivered(bot, 1)
        assert burst.remaining == 0 and bot.outbox.retries >= 1
        assert [e for e in it.events if is_result(e)] == [result]


async def test_deleted_original_falls_back_to_a_channel_message(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a shy castle", "seed": 4})
        await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
        await world.fake.delete_message(it.original, by=world.alice)
        bot.executor.resume()
        await wait_until(lambda: bool(result_messages(world)))
        await bot.outbox.wait_idle()
        posted = result_messages(world)
        assert len(posted) == 1
        assert posted[0].content.startswith(f"<@{world.alice.id}>")
        assert await delivered(bot, 1)


async def test_hung_upload_is_retried_without_a_visible_duplicate(
    world, tiny_model_dir: Path
) -> None:
    # No previews: the only channel post with files is then the result, which the hang targets.
    async with running(world, tiny_model_dir, upload_timeout_s=5, queue={"previews": False}) as bot:
        bot.outbox.upload_timeout_s = 1.0
        bot.outbox.first_backoff_s = 0.05
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a slow castle", "seed": 6})
        await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
        job = bot.executor.queue.order()[0]
        job.reference["created"] -= 16 * 60  # the token expired: the result goes to the channel
        world.fake.expire_interaction(it)
        # The first result post hangs past the time limit and then lands anyway; the retry
        # carries the same nonce, so Discord returns that message instead of posting a second.
        world.fake.hang(1, delay=2.0, route=is_channel_upload)
        bot.executor.resume()
        await wait_until(lambda: bool(result_messages(world)))
        await bot.outbox.wait_idle()
        await wait_until(lambda: len(result_posts(world)) >= 2)  # the hung post landed too
        assert result_posts(world) == ["channel_message", "duplicate_channel_message"]
        assert len(result_messages(world)) == 1
        assert await delivered(bot, 1)
        assert f"<@{world.alice.id}>" in result_messages(world)[0].content


async def test_undelivered_result_is_delivered_after_a_restart(
    world, tiny_model_dir: Path, caplog
) -> None:
    async with running(world, tiny_model_dir) as bot:
        await bot.outbox.stop()  # as if the process died right after the 'finished' commit
        finished = asyncio.Event()
        # Listeners run in order, so the outbox has seen the event when this one is called.
        bot.executor.subscribe(lambda e: finished.set() if isinstance(e, Finished) else None)
        it = await world.slash(world.alice, "imagine", {"prompt": "a crashing castle", "seed": 3})
        await asyncio.wait_for(finished.wait(), 60)
        assert bot.outbox.pending == 0  # no delivery was started, so none can land later
        job = await bot.storage.get_job(1)
        assert job is not None and job.status == "finished" and not job.delivered
        assert not [e for e in it.events if is_result(e)]
    caplog.set_level(logging.DEBUG)
    async with running(world, tiny_model_dir) as bot:
        result = await wait_result(it)
        await bot.outbox.wait_idle()
        assert await delivered(bot, 1)
        assert result.files[0].filename == "job1-0.png"
    token = it.token
    assert token not in caplog.text, "an interaction token reached the log"


async def test_prompt_text_cannot_ping_anyone(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        prompt = f"@everyone <@&{world.guild.roles[0].id}> <@{world.bob.id}> a castle"
        it = await world.slash(world.alice, "imagine", {"prompt": prompt, "seed": 1})
        await wait_result(it)
        sent = [e for e in it.events if e.kind == "edit_original"]
        for event in sent:
            mentions = event.payload.get("allowed_mentions")
            assert mentions is not None, "an edit without allowed_mentions may ping"
            assert mentions.get("parse") in ([], None)
            assert str(world.bob.id) not in [str(u) for u in mentions.get("users", [])]


async def test_result_too_large_for_the_server_becomes_a_plain_message(
    world, tiny_model_dir: Path
) -> None:
    world.fake.attachment_size_limit = 200  # bytes: every PNG is over this server's limit
    async with running(world, tiny_model_dir) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a huge castle", "seed": 1})
        final = await it.wait_for(
            lambda e: e.kind == "edit_original" and "kept on the bot's disk" in str(e.payload)
        )
        assert not final.files and "413" in final.payload["content"]
        await bot.outbox.wait_idle()
        assert await delivered(bot, 1)
