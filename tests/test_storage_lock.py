"""A database locked by another program, below Discord: a command's write gives up at its
budget and never lands later, other writes wait for the lock to end, reads pass meanwhile, and
a written job whose command could not be acknowledged is still cancelled once the lock ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import QueueConfig
from engine.requests import GenerationRequest
from scheduling.jobs import NewJob
from scheduling.scheduler import Scheduler
from storage import Storage, StorageSettings
from storage.busy import budget_for_new_tasks
from storage.errors import DatabaseLockedError
from tests.test_scheduler_pool import FakeWorker, StubGenerator


def _settings(tmp_path: Path) -> StorageSettings:
    # A start-up busy timeout shorter than the locks below: waiting longer is the retries' doing.
    return StorageSettings(_env_file=None, db_path=tmp_path / "bot.sqlite3", busy_timeout_ms=200)


@contextlib.contextmanager
def held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another program's write lock on the database file (a database browser, a backup)."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def within_budget(seconds: float, work: Coroutine[Any, Any, Any]) -> Any:
    """Run ``work`` as an interaction's handler task runs: with an answer budget."""
    with budget_for_new_tasks(seconds):
        task = asyncio.create_task(work)
    return await task


async def test_command_gives_up_at_its_budget_and_other_writes_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage")
    storage = await Storage.open(settings=_settings(tmp_path))
    loop = asyncio.get_running_loop()
    try:
        await storage.users.set_fixed_seed(7, 1)
        with held(storage.db.path):
            start = loop.time()
            with pytest.raises(DatabaseLockedError):
                new = NewJob(user_id=7, work=GenerationRequest("a cat"))
                await within_budget(0.4, storage.create_job(new))
            assert 0.25 < loop.time() - start < 0.6
            # Reads answer meanwhile, and fast.
            start = loop.time()
            profile = await within_budget(0.4, storage.users.get_user(7))
            assert profile.fixed_seed == 1 and loop.time() - start < 0.2
            # A write with no budget (a job's status, a delivery mark) waits for the lock,
            # past the start-up busy timeout, and lands once it ends.
            waiting = asyncio.create_task(storage.users.set_fixed_seed(7, 2))
            # One cancelled while it waits (a timeout around it) leaves nothing half-open.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(storage.users.set_fixed_seed(7, 3), 0.15)
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            assert not done and storage.db.locks.since is not None
        assert (await waiting).fixed_seed == 2
        with contextlib.closing(sqlite3.connect(storage.db.path)) as reader:  # committed
            assert reader.execute("SELECT fixed_seed FROM users").fetchall() == [(2,)]
        # The command's job was never written, and nothing writes it later.
        assert await storage.db.fetchall("SELECT id FROM jobs") == []
    finally:
        await storage.close()
    locks = storage.db.locks
    assert locks.count == 1 and 0.8 < locks.last_s < 3.0
    assert "last locked" in locks.summary()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "storage.busy"]
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert f"locked for {locks.last_s:.1f} s" in messages[1][1]


async def test_unacknowledged_job_is_cancelled_once_the_lock_ends(tmp_path: Path) -> None:
    storage = await Storage.open(settings=_settings(tmp_path))
    sched = Scheduler(
        StubGenerator(),  # type: ignore[arg-type]
        storage,
        QueueConfig(),
        workers=[FakeWorker("w0")],  # type: ignore[list-item]
    )
    sched.pause()
    await sched.start()
    loop = asyncio.get_running_loop()
    try:

        async def too_late(job: Any) -> None:
            # Written; then the defer fails (Discord's 3 s passed) while another program takes
            # the lock for longer than the command's budget.
            other = stack.enter_context(held(storage.db.path))
            loop.call_later(0.6, other.execute, "ROLLBACK")
            raise TimeoutError("interaction expired")

        with contextlib.ExitStack() as stack, pytest.raises(TimeoutError):
            new = NewJob(user_id=1, work=GenerationRequest("a dog", seed=1))
            await within_budget(0.3, sched.submit(new, acknowledge=too_late))
        job = await storage.get_job(1)
        # Cancelled and delivered (nothing to post): it can never run as a ghost job.
        assert job is not None and job.status == "cancelled" and job.delivered
        assert len(sched.queue) == 0 and await storage.unfinished_jobs() == []
    finally:
        await sched.stop()
        await storage.close()
