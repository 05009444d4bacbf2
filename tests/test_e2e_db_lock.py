"""Another program holds the bot's SQLite file (a database browser, a backup tool).

Every interaction is still answered within Discord's 3 seconds: /imagine is refused in words
(nothing queued, no ghost job later), reads answer as usual, and a job already running finishes
and delivers once the lock ends. The fake Discord refuses a first answer later than 3 s (10062).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.e2e_harness import answer, ephemeral, is_result, running, text_of, wait_result

BUSY = "The server's database is busy (another program has it open); nothing was queued"
LOCK_S = 6.0  # longer than the old 5 s busy timeout, after which a result's write was given up


async def test_locked_database_refuses_in_words_and_accepted_jobs_deliver(
    world, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage")
    async with running(world, tiny_model_dir) as bot:
        # Alice's job is running on the engine when the other program takes the lock.
        entered, release, made = threading.Event(), threading.Event(), threading.Event()
        original_run = bot.generator.run

        def gated_run(*args, **kwargs):
            entered.set()
            release.wait(30)
            try:
                return original_run(*args, **kwargs)
            finally:
                made.set()

        bot.generator.run = gated_run  # type: ignore[method-assign]
        accepted = await world.slash(world.alice, "imagine", {"prompt": "a red boat", "seed": 5})
        assert (await accepted.wait_callback()).type == 5
        assert await asyncio.to_thread(entered.wait, 30)
        other = sqlite3.connect(world.tmp / "bot.sqlite3", isolation_level=None, timeout=5)
        other.execute("BEGIN EXCLUSIVE")
        loop = asyncio.get_running_loop()
        locked_at = loop.time()
        try:
            release.set()  # her images are made while the lock is held; recording them waits
            refused = await world.slash(world.bob, "imagine", {"prompt": "a green tree"})
            reply = await refused.wait_callback(timeout=10)
            took = reply.at - refused.created_at
            print(f"/imagine answered {took:.2f} s after its dispatch while locked")
            assert took < 3.0 and reply.type == 4 and ephemeral(reply)
            assert BUSY in reply.data["content"]
            # Reads keep answering while the lock lasts (a write waiting does not block them).
            queue = await world.slash(world.bob, "queue")
            shown = await queue.wait_callback(timeout=10)
            assert shown.at - queue.created_at < 3.0
            # Any other command that must write: the central error handler's words, in time.
            seed = await world.slash(world.bob, "seed set", {"value": 42})
            said = await seed.wait_callback(timeout=10)
            assert said.at - seed.created_at < 3.0 and ephemeral(said)
            assert "database is busy" in said.data["content"], said.data
            print(
                f"/queue {shown.at - queue.created_at:.2f} s, /seed {said.at - seed.created_at:.2f} s"
            )
            # Her images are made; recording them waits for the lock.
            assert await asyncio.to_thread(made.wait, 30)
            assert not any(is_result(e) for e in accepted.events)
            # The other program keeps the file past the old 5 s busy timeout (a backup, say):
            # the finished job's result waits for it rather than being given up.
            await asyncio.sleep(max(0.0, locked_at + LOCK_S - loop.time()))
        finally:
            other.execute("ROLLBACK")
            other.close()
        released_at, released_wall = loop.time(), time.monotonic()
        result = await wait_result(accepted, timeout=60)
        assert result.at >= released_wall  # posted only once the lock had ended
        print(f"the accepted job delivered {loop.time() - released_at:.2f} s after the lock ended")
        assert result.files
        await bot.outbox.wait_idle()
        rows = await bot.storage.db.fetchall("SELECT user_id, status FROM jobs")
        # Bob's refused command never became a job: nothing runs or posts for it later.
        assert [(r["user_id"], r["status"]) for r in rows] == [(world.alice.id, "done")]
        assert [e.kind for e in refused.events] == ["callback"]
        assert await bot.storage.users.get_user(world.bob.id) is None  # his seed never saved
        assert world.fake.rejections == []
        stats = text_of(await answer(await world.slash(world.admin, "admin stats")))
        episode = bot.storage.db.locks
        assert episode.count == 1 and episode.last_s >= LOCK_S - 1.0
        assert f"for {episode.last_s:.1f} s" in stats, stats
    starts = [r for r in caplog.records if r.levelno == logging.WARNING and "locked" in r.message]
    ends = [r for r in caplog.records if "free again" in r.message]
    assert len(starts) == 1 and len(ends) == 1, [r.message for r in starts + ends]
