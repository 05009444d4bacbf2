"""A progress edit still on its way when the job finishes must not land over the result.

Found by the soak (tests/soak.py): a throttled progress edit, sent and then cancelled when the
result was due, still reached Discord after the result and replaced it (no images). The fake
holds that edit, as a slow network would; the result must come after it.
"""

from __future__ import annotations

from pathlib import Path

from botcore.progress import Update
from tests.e2e_harness import World, is_result, running, wait_result


def is_progress_edit(request) -> bool:
    """A JSON edit of @original (previews are off: the result is the only multipart edit)."""
    return (
        request.method == "PATCH"
        and request.path.endswith("/messages/@original")
        and not request.content_type.startswith("multipart/")
    )


async def test_a_progress_edit_in_flight_lands_before_the_result(
    world: World, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, queue={"previews": False}) as bot:
        bot.executor.pause()
        it = await world.slash(world.alice, "imagine", {"prompt": "a slow lighthouse", "seed": 4})
        await it.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
        job = bot.executor.queue.order()[0]
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
