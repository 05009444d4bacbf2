"""A throttled progress update must never land over a newer status (a disk-full Notice).

Found by a probe: the job's last progress ("step 3/3") was throttled, kept as the latest update
and its flush due; the Notice that the outputs disk is full came while the loop was busy, found
the interval passed and was sent at once; the flush then woke and sent the older progress over
it, so the user no longer saw why the job waits. The loop's busy moment is made here with a
blocking sleep, so the order is the same on every run.
"""

from __future__ import annotations

import time
from pathlib import Path

from botcore.progress import Update
from tests.e2e_harness import World, running


async def test_a_due_progress_flush_never_lands_over_a_newer_notice(
    world: World, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, queue={"previews": False}) as bot:
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a full harbour", "seed": 5})
        await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
        job = bot.executor.queue.order()[0]
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
