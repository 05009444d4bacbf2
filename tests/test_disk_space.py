"""A full disk without Discord: the space guard's words, the doctor's warning, a job's wait."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine import doctor
from engine.config import QueueConfig
from scheduling import disk_wait
from scheduling.disk import DiskFull, ImagesUnsaved, is_disk_full, saving
from scheduling.events import Cancelled, Failed, Finished, Notice
from scheduling.jobs import MemoryJobStore, NewJob
from scheduling.scheduler import Scheduler
from scheduling.workers.base import JobRun
from storage.errors import DiskFullError, explain_sqlite_error
from storage.space import DiskSpace
from tests.test_executor import Recorder
from tests.test_scheduler_pool import FakeWorker, StubGenerator, request

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def test_guard_names_the_disk_and_both_folders_when_they_share_it(tmp_path: Path) -> None:
    outputs, db = tmp_path / "outputs", tmp_path / "data" / "bot.sqlite3"
    roomy = DiskSpace(outputs, db, min_free_mb=0, wait_limit_s=1)
    roomy.admit()  # nothing is under a threshold of 0
    assert roomy.low() == []
    tight = DiskSpace(outputs, db, min_free_mb=10**12, wait_limit_s=1)  # no disk is that big
    [disk] = tight.low()  # one disk holds both: named once, with both folders
    assert disk.holds == f"{outputs.as_posix()}/ and the database ({db})"
    with pytest.raises(DiskFullError) as refused:
        tight.admit()
    assert str(refused.value).startswith(f"The disk holding {outputs.as_posix()}/ and the")
    assert "an admin needs to free space" in str(refused.value)
    assert isinstance(refused.value, DiskFull) and is_disk_full(refused.value)


def test_sqlite_full_is_a_disk_full_error_in_words(tmp_path: Path) -> None:
    error = explain_sqlite_error(sqlite3.OperationalError("database or disk is full"), tmp_path)
    assert isinstance(error, DiskFullError)
    assert str(error).startswith(f"The disk holding the database ({tmp_path}) is full")
    assert is_disk_full(ENOSPC) and not is_disk_full(OSError(errno.EACCES, "denied"))


def test_saving_turns_a_full_disk_into_images_kept_for_a_retry() -> None:
    tries: list[int] = []

    def save() -> Any:
        tries.append(1)
        if len(tries) < 3:
            raise ENOSPC
        return "saved", {}

    with pytest.raises(ImagesUnsaved) as first:
        saving(save)
    with pytest.raises(ImagesUnsaved) as second:
        first.value.retry()
    assert second.value.retry() == ("saved", {}) and len(tries) == 3
    with pytest.raises(PermissionError):  # other errors are not a full disk: raised as they are
        saving(lambda: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))


def test_doctor_warns_under_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = type("Usage", (), {"free": 400 * 2**20})
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage)
    under = doctor.check_disk("outputs", tmp_path, min_free_mb=500)
    assert not under.ok and "400 MB free" in under.summary
    assert "STORAGE_MIN_FREE_MB=500" in under.fix and "refuses new work" in under.fix
    above = doctor.check_disk("outputs", tmp_path, min_free_mb=300)
    assert "STORAGE_MIN_FREE_MB" not in above.fix  # still low (under 2 GB), not refusing
    env = tmp_path / ".env"
    env.write_text("STORAGE_MIN_FREE_MB=500\n")
    monkeypatch.delenv("STORAGE_MIN_FREE_MB", raising=False)
    assert doctor.min_free_setting(doctor.read_env(env)) == 500
    assert doctor.min_free_setting({"STORAGE_MIN_FREE_MB": "lots"}) == doctor.MIN_FREE_MB


class Guard:
    """A space guard with a short wait limit."""

    def __init__(self, wait_limit_s: float) -> None:
        self.wait_limit_s = wait_limit_s

    def admit(self) -> None:
        pass

    def outputs_full(self) -> str:
        return "The disk holding out/ is full (0 MB free)"


class FullDiskWorker(FakeWorker):
    """Makes images whose save fails with ENOSPC until ``space`` is set."""

    def __init__(self) -> None:
        super().__init__("w0")
        self.space = False

    async def generate(self, run: JobRun, sink: Any, image_path: Any) -> Any:
        made = await super().generate(run, sink, image_path)

        def save() -> Any:
            if not self.space:
                raise ENOSPC
            return made

        return saving(save)


async def _scheduler(worker: FullDiskWorker, wait_limit_s: float) -> Scheduler:
    sched = Scheduler(
        StubGenerator(),  # type: ignore[arg-type]
        MemoryJobStore(),
        QueueConfig(per_user_cap=50, global_cap=500),
        workers=[worker],
        space=Guard(wait_limit_s),
    )
    sched.rec = Recorder()  # type: ignore[attr-defined]
    sched.subscribe(sched.rec)  # type: ignore[attr-defined]
    await sched.start()
    return sched


async def test_a_job_waits_for_space_then_finishes_or_fails_in_words_at_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(disk_wait, "FIRST_RETRY_S", 0.02)
    monkeypatch.setattr(disk_wait, "MAX_RETRY_S", 0.05)
    worker = FullDiskWorker()
    sched = await _scheduler(worker, wait_limit_s=0.3)
    job = await sched.submit(NewJob(user_id=1, work=request("kept")))
    [failed] = await sched.rec.wait(Failed, job.id)
    assert failed.message.startswith("The disk holding out/ is full (0 MB free) and stayed full")
    assert "try again once an admin has freed space" in failed.message
    [told] = sched.rec.of(Notice, job.id)
    assert "your images are made and will be posted" in told.message

    sched.space = sched.disk_wait.guard = Guard(wait_limit_s=60)
    second = await sched.submit(NewJob(user_id=1, work=request("kept too")))
    await sched.rec.wait(Notice, second.id)
    assert not sched.rec.of(Finished, second.id)
    worker.space = True
    await sched.rec.wait(Finished, second.id)
    assert sched.disk_wait.waiting == 0

    worker.space = False
    third = await sched.submit(NewJob(user_id=1, work=request("cancelled")))
    await sched.rec.wait(Notice, third.id)
    assert await sched.cancel(third.id) == "running"
    [cancelled] = await sched.rec.wait(Cancelled, third.id)
    assert cancelled.was_running
    await sched.stop()
