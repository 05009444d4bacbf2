"""A job's message ends on its newest status: no older progress edit lands over a newer one.

Found by the soak (tests/soak.py): a throttled progress edit, sent and then cancelled when the
result was due, still reached Discord after the result and replaced it (no images). The fake
holds that edit, as a slow network would; the result must come after it.

Found by a probe: the job's last progress ("step 3/3") was throttled, kept as the latest update
and its flush due; the Notice that the outputs disk is full came while the loop was busy, found
the interval passed and was sent at once; the flush then woke and sent the older progress over
it. The loop's busy moment is made with a blocking sleep, so the order is the same on every run.
"""

from __future__ import annotations

import time
from pathlib import Path

from bot import ImageBot
from botcore.progress import Update
from scheduling.jobs import JobRecord
from tests.e2e_harness import World, is_result, running, wait_result
from tests.fake_discord import InteractionRecord


def is_progress_edit(request) -> bool:
    """A JSON edit of @original (previews are off: the result is the only multipart edit)."""
    return (
        request.method == "PATCH"
        and request.path.endswith("/messages/@original")
        and not request.content_type.startswith("multipart/")
    )


async def queued_job(
    world: World, bot: ImageBot, prompt: str
) -> tuple[InteractionRecord, JobRecord]:
    """An /imagine held in the paused queue: its interaction and its job."""
    bot.executor.pause()
    it = await world.slash(world.alice, "imagine", {"prompt": prompt, "seed": 4})
    await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
    return it, bot.executor.queue.order()[0]


async def test_a_progress_edit_in_flight_lands_before_the_result(
    world: World, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, queue={"previews": False}) as bot:
        it, job = await queued_job(world, bot, "a slow lighthouse")
        messenger = bot.messenger
        await messenger.update(job, Update(content="🎨 step 1"), interval=0)  # sent at once
        # The next one is throttled (sent by the messenger's flush a moment later) and held on
        # its way, as a slow network would, until well after the job's end.
        held = world.fake.hang(1, delay=3.0, route=is_progress_edit)
        await messenger.update(job, Update(content="🎨 step 2"), interval=1.0)
        await held.wait_held(1)
        bot.executor.resume()
        result = await wait_result(it)
        await held.wait_settled(1)
        await bot.outbox.wait_idle()
    contents = [str(e.payload.get("content"))[:20] for e in it.edits]
    assert "🎨 step 2" in contents and is_result(it.edits[-1]), contents
    assert it.original is not None
    assert [a.filename for a in it.original.attachments] == [f.filename for f in result.files]


async def test_a_due_progress_flush_never_lands_over_a_newer_notice(
    world: World, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, queue={"previews": False}) as bot:
        it, job = await queued_job(world, bot, "a full harbour")
        messenger = bot.messenger
        await messenger.update(job, Update(content="🎨 step 1/3"), interval=0)  # sent at once
        await messenger.update(job, Update(content="🎨 step 3/3"))  # throttled: the latest
        flush = messenger._states[job.id].flush
        assert flush is not None
        # The loop is busy past the interval: the flush is due but has not run yet.
        time.sleep(messenger.interval * 1.2)
        await messenger.update(job, Update(content="⚠️ the outputs disk is full"))
        await flush  # the throttled update's turn has come and gone
        await messenger.finalize(job.id)  # and any edit still on its way has landed
    contents = [str(e.payload.get("content")) for e in it.edits]
    assert contents[-1] == "⚠️ the outputs disk is full", contents
    assert it.original is not None and it.original.content == "⚠️ the outputs disk is full"
