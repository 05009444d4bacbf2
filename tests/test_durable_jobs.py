"""Durable job edges below Discord: finished-not-delivered, caps under bursts, store failures."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from engine.requests import GenerationRequest
from scheduling.events import Cancelled, Finished, Progress
from scheduling.executor import build_scheduler
from scheduling.jobs import JobRecord, MemoryJobStore, NewJob, TrainSpec
from scheduling.queue import FairQueue, QueueFullError
from storage import Storage
from storage.errors import StorageError
from tests.test_executor import Recorder, request

MIGRATIONS = Path(__file__).resolve().parent.parent / "storage" / "migrations"
STORED = request(num_inference_steps=2, guidance_scale=5.0, width=64, height=64, scheduler="Euler")


async def test_finished_generation_waits_for_delivery(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "bot.sqlite3")
    try:
        job = await storage.create_job(NewJob(user_id=7, work=STORED))
        await storage.set_job_status(job.id, "running")
        result = {"seeds": [3], "paths": [str(tmp_path / "a.png")], "model": "tiny"}
        await storage.set_job_status(job.id, "finished", result=result)
        # Recorded (seeds, generation row) but not delivered: a restart must deliver it.
        assert [j.id for j in await storage.undelivered_jobs()] == [job.id]
        assert await storage.unfinished_jobs() == []
        generation = await storage.generations.get_generation_by_job(job.id)
        assert generation is not None and list(generation.seeds) == [3]
        assert (await storage.users.get_user(7)).last_seed == 3
        await storage.mark_delivered(job.id)
        stored = await storage.get_job(job.id)
        assert stored is not None and stored.status == "done" and stored.delivered
        assert await storage.undelivered_jobs() == []
        # A failure carries a message to deliver too.
        failed = await storage.create_job(NewJob(user_id=7, work=request()))
        await storage.set_job_status(failed.id, "failed", result={"message": "no"})
        assert [j.id for j in await storage.undelivered_jobs()] == [failed.id]
    finally:
        await storage.close()


async def test_training_registers_its_lora_in_the_same_transaction(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "bot.sqlite3")
    try:
        await storage.loras.add_lora(name="pinky", path=str(tmp_path / "p"), status="training")
        await storage.loras.add_lora(name="gone", path=str(tmp_path / "g"), status="training")
        ok = await storage.create_job(NewJob(user_id=1, work=TrainSpec("pinky")))
        bad = await storage.create_job(NewJob(user_id=1, work=TrainSpec("gone")))
        await storage.set_job_status(ok.id, "finished", result={"sha256": "ab" * 32})
        await storage.set_job_status(bad.id, "cancelled", result={"was_running": True})
        pinky = await storage.loras.get_lora("pinky")
        assert pinky is not None and pinky.status == "ready" and pinky.sha256 == "ab" * 32
        # A cancel without a checkpoint frees the name; with one, the checkpoint is the LoRA.
        assert await storage.loras.get_lora("gone") is None
        assert (await storage.jobs.get_job_result(bad.id) or {})["lora"] == "freed"
        await storage.loras.add_lora(name="kept", path=str(tmp_path / "k"), status="training")
        kept = await storage.create_job(NewJob(user_id=1, work=TrainSpec("kept")))
        step8 = str(tmp_path / "k" / "checkpoint-8")
        await storage.set_job_status(
            kept.id,
            "cancelled",
            result={"was_running": True, "checkpoint_path": step8, "sha256": "ef" * 32},
        )
        record = await storage.loras.get_lora("kept")
        assert record is not None and record.status == "ready"
        assert (record.path, record.sha256) == (step8, "ef" * 32)
        assert (await storage.jobs.get_job_result(kept.id) or {})["lora"] == "checkpoint"
        await storage.loras.add_lora(name="broken", path=str(tmp_path / "b"), status="training")
        broken = await storage.create_job(NewJob(user_id=1, work=TrainSpec("broken")))
        await storage.set_job_status(broken.id, "failed", result={"message": "boom"})
        assert (await storage.loras.get_lora("broken")).status == "failed"
        # If the job write fails, the LoRA must not be ready either (one transaction).
        await storage.loras.add_lora(name="atomic", path=str(tmp_path / "a"), status="training")
        job = await storage.create_job(NewJob(user_id=1, work=TrainSpec("atomic")))
        with pytest.raises(ValueError, match="job status"):
            await storage.set_job_status(job.id, "exploded", result={})  # type: ignore[arg-type]
        await storage.db.execute(
            "CREATE TRIGGER no_finish BEFORE UPDATE OF status ON jobs"
            " WHEN NEW.status = 'finished' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        with pytest.raises((StorageError, sqlite3.IntegrityError)):
            await storage.set_job_status(job.id, "finished", result={"sha256": "cd" * 32})
        assert (await storage.loras.get_lora("atomic")).status == "training"
    finally:
        await storage.close()


async def test_migration_keeps_jobs_and_their_ids(tmp_path: Path) -> None:
    first_only = tmp_path / "m1"
    first_only.mkdir()
    (first_only / "0001_init.sql").write_text((MIGRATIONS / "0001_init.sql").read_text())
    db = tmp_path / "bot.sqlite3"
    old = await Storage.open(db, migrations_dir=first_only)
    for status in ("done", "queued", "queued"):  # rows as the previous version wrote them
        await old.db.execute(
            "INSERT INTO jobs (kind, user_id, payload, status, created_at, finished_at)"
            " VALUES ('generate', 1, '{}', ?, 1.0, 2.0)",
            (status,),
        )
    ids = [1, 2, 3]
    await old.db.execute("DELETE FROM jobs WHERE id = 3")  # the id stays used
    await old.close()
    new = await Storage.open(db)
    try:
        done = await new.get_job(ids[0])
        assert done is not None and done.status == "done" and done.delivered
        queued = await new.get_job(ids[1])
        assert queued is not None and queued.status == "queued" and not queued.delivered
        assert await new.undelivered_jobs() == []  # old finished jobs count as delivered
        fresh = await new.create_job(NewJob(user_id=1, work=request()))
        assert fresh.id == ids[2] + 1
    finally:
        await new.close()


class SlowStore(MemoryJobStore):
    """A store whose writes take a moment, so concurrent submits interleave."""

    async def create_job(self, new: NewJob) -> JobRecord:
        await asyncio.sleep(0.01)
        return await super().create_job(new)


async def test_global_cap_holds_under_a_burst() -> None:
    queue = FairQueue(SlowStore(), per_user_cap=3, global_cap=100)

    async def one(user: int) -> bool:
        try:
            await queue.submit(NewJob(user_id=user, work=GenerationRequest("")))
        except QueueFullError:
            return False
        return True

    accepted = await asyncio.gather(*(one(user) for user in range(160)))
    assert sum(accepted) == 100 and len(queue) == 100


async def test_failed_acknowledgement_cancels_the_job_and_frees_its_slot(
    tiny_generator: TextToImageGenerator, tmp_path: Path
) -> None:
    store = MemoryJobStore()
    ex = build_scheduler(
        tiny_generator, store, QueueConfig(per_user_cap=1), image_path=lambda j, i: tmp_path / "x"
    )
    ex.pause()
    await ex.start()
    try:

        async def too_late(job):
            raise TimeoutError("interaction expired")

        with pytest.raises(TimeoutError):
            await ex.submit(NewJob(user_id=1, work=request()), acknowledge=too_late)
        assert store.jobs[1].status == "cancelled" and store.jobs[1].delivered
        assert len(ex.queue) == 0
        acknowledged: list[int] = []

        async def ack(job):
            assert ex.queue.get_job(job.id) is None  # written, not yet startable
            acknowledged.append(job.id)

        job = await ex.submit(NewJob(user_id=1, work=request()), acknowledge=ack)
        assert acknowledged == [job.id] and ex.queue.get_job(job.id) is not None
    finally:
        await ex.stop()


class FlakyStore(MemoryJobStore):
    """Fails the first N writes of a given status, like a locked or full disk."""

    def __init__(self, status: str, failures: int) -> None:
        super().__init__()
        self.fail_status = status
        self.failures = failures

    async def set_job_status(self, job_id, status, **kwargs):  # type: ignore[override]
        if status == self.fail_status and self.failures > 0:
            self.failures -= 1
            raise StorageError("database is locked")
        await super().set_job_status(job_id, status, **kwargs)


@pytest.mark.parametrize("status", ["running", "done"])
async def test_dispatcher_survives_storage_errors(
    tiny_generator: TextToImageGenerator, tmp_path: Path, status: str
) -> None:
    store = FlakyStore(status, failures=1)
    ex = build_scheduler(
        tiny_generator,
        store,
        QueueConfig(progress_interval_s=60),
        image_path=lambda j, i: tmp_path / f"job{j.id}-{i}.png",
    )
    rec = Recorder()
    ex.subscribe(rec)
    await ex.start()
    try:
        first = await ex.submit(NewJob(user_id=1, work=request("one")))
        second = await ex.submit(NewJob(user_id=2, work=request("two")))
        await rec.wait(Finished, first.id, timeout=120)
        await rec.wait(Finished, second.id, timeout=120)
        assert ex.dispatcher_alive
        assert ex.health.errors == 1 and "database is locked" in (ex.health.last_error or "")
        assert store.jobs[first.id].status == "done" and store.jobs[second.id].status == "done"
        assert len(rec.of(Finished, first.id)) == 1  # retried, finished once
    finally:
        await ex.stop()


class SliceTrainer:
    """A trainer stand-in: 2 steps a slice of 20, nothing learned (visibility is under test)."""

    def __init__(self, job) -> None:
        self.step = 0

    def setup(self) -> None:
        pass

    def train_steps(self, count: int, cancel) -> object:
        from types import SimpleNamespace

        self.step = min(20, self.step + 2)
        return SimpleNamespace(
            step=self.step, max_steps=20, seconds_per_step=0.01, loss=0.1, done=self.step >= 20
        )

    def suspend(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def finish(self) -> dict:
        return {"weights_path": "x"}

    def abort(self) -> None:
        pass


async def test_training_between_slices_stays_visible_and_cancellable(
    tiny_generator: TextToImageGenerator, tmp_path: Path
) -> None:
    ex = build_scheduler(
        tiny_generator,
        MemoryJobStore(),
        QueueConfig(progress_interval_s=0, train_slice_steps=2),
        image_path=lambda j, i: tmp_path / f"job{j.id}-{i}.png",
        trainer_factory=SliceTrainer,
    )
    rec = Recorder()
    ex.subscribe(rec)
    ex.pause()
    await ex.start()
    try:
        training = await ex.submit(NewJob(user_id=1, work=TrainSpec("t")))
        image = await ex.submit(
            NewJob(user_id=2, work=request("between slices", num_inference_steps=20))
        )
        seen: dict[str, object] = {}

        def during_image(event) -> None:
            if isinstance(event, Progress) and event.job.id == image.id and "ids" not in seen:
                seen["ids"] = ex.snapshot().running_ids()
                seen["position"] = ex.position(training.id)
                seen["cancel"] = asyncio.ensure_future(ex.cancel(training.id))

        ex.subscribe(during_image)
        ex.resume()
        await rec.wait(Finished, image.id, timeout=120)
        # While the image ran between two slices, the training was listed as running.
        assert seen["ids"] == {training.id, image.id} and seen["position"] == 0
        # Cancel pressed while the image ran: the training stops at its next slice.
        assert await seen["cancel"] == "running"  # type: ignore[misc]
        await rec.wait(Cancelled, training.id, timeout=60)
        assert not rec.of(Finished, training.id)
    finally:
        await ex.stop()
