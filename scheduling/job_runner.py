"""One job on one worker: start it, run it, and record how it ended (finished, failed, lost).

The scheduler owns one JobRunner and hands it each job its dispatcher picked; the runner counts
worker deaths per job against the kill limit and hands trainings to the TrainingRunner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from engine.config import QueueConfig
from engine.errors import EngineError, GenerationCancelled, RequestError
from scheduling.active import ActiveRuns
from scheduling.announcer import Announcer
from scheduling.disk import ImagesUnsaved, OutputsStayedFull, is_disk_full
from scheduling.disk_wait import DiskWait, stopped_words
from scheduling.events import Notice, Started
from scheduling.health import EngineHealth
from scheduling.jobs import JobRecord, JobStore
from scheduling.outcomes import Outcomes, StoreFailure
from scheduling.queue import FairQueue
from scheduling.training_runner import TrainingRunner
from scheduling.workers.base import JobRun, Worker, WorkerLost
from scheduling.workers.core import OutOfMemoryExhausted

log = logging.getLogger(__name__)

ImagePath = Callable[[JobRecord, int], Path]


class JobRunner:
    """Runs jobs on workers and records their outcomes."""

    def __init__(
        self,
        *,
        store: JobStore,
        queue: FairQueue,
        announcer: Announcer,
        outcomes: Outcomes,
        active: ActiveRuns,
        training: TrainingRunner,
        health: EngineHealth,
        disk: DiskWait,
        config: QueueConfig,
        kill_limit: int,
        image_path: ImagePath | None,
        stopping: Callable[[], bool],
    ) -> None:
        self.store = store
        self.queue = queue
        self.announcer = announcer
        self.outcomes = outcomes
        self.active = active
        self.training = training
        self.health = health
        self.disk = disk
        self.config = config
        self.kill_limit = kill_limit
        self.image_path = image_path
        self.stopping = stopping
        self.kills: dict[int, int] = {}  # job id -> times it took its worker down

    async def run_job(self, job: JobRecord, worker: Worker) -> None:
        """Run one job on a worker and record its outcome."""
        try:
            await self._run(job, worker)
        finally:
            if job.status not in ("queued", "running"):
                self.kills.pop(job.id, None)  # it ended: its deaths no longer count

    async def _run(self, job: JobRecord, worker: Worker) -> None:
        announcer = self.announcer
        # 1. give up a job that never finished (worker deaths count apart, see kill_limit)
        if job.attempts - self.kills.get(job.id, 0) >= self.config.max_attempts:
            await self.outcomes.fail(
                job, f"This job was tried {job.attempts} times and never finished."
            )
            return
        # 2. mark it running and tell everyone
        await self.store.set_job_status(job.id, "running")
        job.attempts += 1
        job.status = "running"
        run = JobRun(job, worker=worker.name)
        self.active.start(worker.name, run)
        log.info(
            "job %s (%s) started for user %s on %s", job.id, job.kind, job.user_id, worker.name
        )
        announcer.emit(Started(job))
        announcer.announce_positions()
        # 3. run it and record the outcome
        try:
            if job.kind == "train":
                await self.training.run(job, run, worker, serve=self.run_job)
            else:
                try:
                    result, data = await worker.generate(run, announcer, self.image_path)
                except ImagesUnsaved as unsaved:  # the outputs disk is full: wait for space
                    result, data = await self.disk.saved(job, run, unsaved)
                announcer.record_speed(job, result)
                await self.outcomes.finish(job, result, data)
        except WorkerLost as exc:
            await self._worker_lost(job, worker, exc)
        except GenerationCancelled:
            if self.stopping():
                await self.store.set_job_status(job.id, "queued")
                log.info("job %s interrupted by shutdown; it will run again after restart", job.id)
            else:
                await self.outcomes.cancel(job, was_running=True, step=run.step)
        except StoreFailure as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except (OutOfMemoryExhausted, EngineError, RequestError, OutputsStayedFull) as exc:
            await self.outcomes.fail(job, str(exc))
        except Exception as exc:
            if is_disk_full(exc):  # in words naming the disk, without a traceback
                words = stopped_words(self.disk.guard, job, run)
                log.warning("job %s stopped: %s (%s)", job.id, words, exc)
                await self.outcomes.fail(job, words, repr(exc))
                return
            log.exception("job %s failed", job.id)
            await self.outcomes.fail(
                job,
                "Something went wrong while making this image; the error was logged.",
                repr(exc),
            )
        finally:
            self.active.end(worker.name)

    async def _worker_lost(self, job: JobRecord, worker: Worker, exc: WorkerLost) -> None:
        """The worker died under the job: back to the front of its fair place, or give up."""
        kills = self.kills[job.id] = self.kills.get(job.id, 0) + 1
        self.health.record(job, exc)
        log.warning(
            "job %s: worker %s died under it (%d time(s)): %s", job.id, worker.name, kills, exc
        )
        if kills >= self.kill_limit:
            await self.outcomes.fail(
                job,
                f"This job stopped its worker {kills} times, so it was given up; try a smaller "
                "size, fewer images or fewer steps.",
                str(exc),
            )
            return
        await self.store.set_job_status(job.id, "queued")
        job.status = "queued"
        if self.stopping():
            return
        self.health.requeued.append(job.id)
        self.queue.push(job)  # its tag puts it back at the front of its fair place
        self.announcer.emit(
            Notice(job, "The worker running this job stopped; it will run again shortly.")
        )
