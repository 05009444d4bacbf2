"""A full disk through the fake Discord: refusals in words, a finished job waits for space.

The outputs folder or the database lives on a 4 MB tmpfs filled to the last byte (root only;
the tests skip elsewhere). Freeing the filler file is the admin freeing space.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_harness import answer, ephemeral, running, text_of, wait_result
from tests.test_e2e_delivery import wait_until

PNG = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def small_disk(path: Path, mb: int = 4) -> Iterator[Path]:
    """A tmpfs of ``mb`` MB mounted at ``path`` for the block (skips when it cannot be)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; return it (unlink it to free the disk)."""
    filler = disk / "filler.bin"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
    return filler


def log_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR records and 'unexpected error' lines: a full disk must produce neither."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR or "unexpected error" in r.getMessage()
    ]


def notice(event) -> bool:
    return "will be posted once an admin frees space" in str(event.data.get("content"))


async def test_full_outputs_disk_refuses_work_and_a_finished_job_waits_for_space(
    world, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with small_disk(world.tmp / "outputs") as disk:
        storage = {"outputs_dir": disk, "min_free_mb": 1}
        async with running(world, tiny_model_dir, storage=storage) as bot:
            bot.executor.pause()
            first = await world.slash(
                world.alice, "imagine", {"prompt": "a patient fox", "seed": 3}
            )
            await first.wait_for(lambda e: "Queued" in str(e.data.get("content")))
            filler = fill(disk)

            # (1) new work is refused, in words naming the disk, ephemerally
            refused = await answer(await world.slash(world.bob, "imagine", {"prompt": "a fox"}))
            words = text_of(refused)
            assert ephemeral(refused) and f"The disk holding {disk.as_posix()}/ is full" in words
            assert "an admin needs to free space" in words and "MB free" in words
            assert "database" not in words  # the database's disk has room: not named
            stats = text_of(await answer(await world.slash(world.admin, "admin stats")))
            assert f"The disk holding {disk.as_posix()}/ is full" in stats
            assert "new work is refused" in stats

            # (2) the accepted job renders, its save fails, it waits with the images in memory
            bot.executor.resume()
            told = await first.wait_for(notice, timeout=60)
            assert f"{disk.as_posix()}/ is full" in told.data["content"]
            job = await bot.storage.get_job(1)
            assert job is not None and job.status == "running"  # not failed, not lost
            assert bot.executor.disk_wait.waiting == 1

            freed = time.monotonic()
            filler.unlink()
            result = await wait_result(first, timeout=60)
            recovery = time.monotonic() - freed
            print(f"delivery recovered {recovery:.2f} s after the outputs disk was freed")
            assert result.files[0].data[:8] == PNG
            saved = sorted(disk.rglob("job1-*.png"))
            assert saved and saved[0].read_bytes()[:8] == PNG
            await bot.outbox.wait_idle()
            job = await bot.storage.get_job(1)
            assert job is not None and job.status == "done" and job.delivered
    assert "images saved after" in caplog.text
    assert log_problems(caplog) == []


async def test_full_database_disk_refuses_in_words_and_recovers_intact(
    world, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with small_disk(world.tmp / "data") as disk:
        db_path = disk / "bot.sqlite3"
        storage = {"db_path": db_path, "min_free_mb": 1}
        async with running(world, tiny_model_dir, storage=storage) as bot:
            ready = await world.slash(world.alice, "imagine", {"prompt": "a calm owl", "seed": 1})
            await wait_result(ready)
            await bot.outbox.wait_idle()
            bot.executor.pause()
            waiting = await world.slash(world.alice, "imagine", {"prompt": "an owl", "seed": 2})
            await waiting.wait_for(lambda e: "Queued" in str(e.data.get("content")))
            filler = fill(disk)

            # Under the threshold: refused before anything is written.
            refused = await answer(await world.slash(world.alice, "imagine", {"prompt": "owl"}))
            assert ephemeral(refused)
            assert f"The disk holding the database ({db_path}) is full" in text_of(refused)
            # A write that SQLite itself refuses (SQLITE_FULL) is said in words too.
            seed = await answer(await world.slash(world.alice, "seed set", {"value": 7}))
            assert ephemeral(seed)
            assert f"The disk holding the database ({db_path}) is full" in text_of(seed)

            # The queued job cannot even be marked running: it waits in the queue, not lost.
            bot.executor.resume()
            await wait_until(lambda: bot.executor.health.errors >= 1)
            job = await bot.storage.get_job(2)
            assert job is not None and job.status == "queued" and job.attempts == 0
            assert "database or disk is full" in str(bot.executor.health.last_error)

            filler.unlink()
            await wait_result(waiting, timeout=60)
            await bot.outbox.wait_idle()
            job = await bot.storage.get_job(2)
            assert job is not None and job.status == "done" and job.delivered
            again = await world.slash(world.alice, "seed set", {"value": 7})
            assert "7" in text_of(await answer(again))
        with sqlite3.connect(db_path) as check:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            statuses = check.execute("SELECT id, status FROM jobs ORDER BY id").fetchall()
        assert statuses == [(1, "done"), (2, "done")]
    assert "goes back to the queue" in caplog.text  # the status write failed and was retried
    assert log_problems(caplog) == []
