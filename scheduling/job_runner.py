"""One job on one worker: start it, run it, and record how it ended (finished, failed, lost).

The scheduler owns one JobRunner and hands it each job its dispatcher picked; the runner counts
worker deaths per job against the scheduler's kill limit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, GenerationCancelled
from scheduling.events import Cancelled, Failed, Finished, Notice, Started
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun, Worker, WorkerLost
from scheduling.workers.core import OutOfMemoryExhausted

if TYPE_CHECKING:
    from scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


class StoreFailure(Exception):
    """Recording an outcome failed (its cause is the store's error)."""


class JobRunner:
    """Runs jobs on workers for a scheduler and records their outcomes in its store."""

    def __init__(self, scheduler: Scheduler, active: dict[str, JobRun]) -> None:
        """``active`` is the scheduler's worker name → running job map, kept up to date here."""
        self.scheduler = scheduler
        self.active = active
        self.kills: dict[int, int] = {}  # job id -> times it took its worker down

    async def run_job(self, job: JobRecord, worker: Worker) -> None:
        """Run one job on a worker and record its outcome."""
        sched = self.scheduler
        announcer = sched.announcer
        # 1. give up a job that never finished (worker deaths count apart, see kill_limit)
        if job.attempts - self.kills.get(job.id, 0) >= sched.config.max_attempts:
            await self.fail(job, f"This job was tried {job.attempts} times and never finished.")
            return
        # 2. mark it running and tell everyone
        await sched.store.set_job_status(job.id, "running")
        job.attempts += 1
        job.status = "running"
        run = JobRun(job, worker=worker.name)
        self.active[worker.name] = run
        log.info(
            "job %s (%s) started for user %s on %s", job.id, job.kind, job.user_id, worker.name
        )
        announcer.emit(Started(job))
        announcer.announce_positions()
        # 3. run it and record the outcome
        try:
            if job.kind == "train":
                await sched.training_runner.run(job, run, worker)
            else:
                result, data = await worker.generate(run, announcer, sched.image_path)
                announcer.record_speed(job, result)
                await self.finish(job, result, data)
        except WorkerLost as exc:
            await self._worker_lost(job, worker, exc)
        except GenerationCancelled:
            if sched.stopping:
                await sched.store.set_job_status(job.id, "queued")
                log.info("job %s interrupted by shutdown; it will run again after restart", job.id)
            else:
                await self.record_outcome(
                    job, "cancelled", result={"was_running": True, "step": run.step}
                )
                announcer.emit(Cancelled(job, was_running=True, step=run.step))
        except StoreFailure as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except (OutOfMemoryExhausted, EngineError, ValueError) as exc:
            await self.fail(job, str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            await self.fail(
                job,
                "Something went wrong while making this image; the error was logged.",
                repr(exc),
            )
        finally:
            self.active.pop(worker.name, None)

    async def _worker_lost(self, job: JobRecord, worker: Worker, exc: WorkerLost) -> None:
        """The worker died under the job: back to the front of its fair place, or give up."""
        sched = self.scheduler
        kills = self.kills[job.id] = self.kills.get(job.id, 0) + 1
        sched.health.record(job, exc)
        log.warning(
            "job %s: worker %s died under it (%d time(s)): %s", job.id, worker.name, kills, exc
        )
        if kills >= sched.kill_limit:
            await self.fail(
                job,
                f"This job stopped its worker {kills} times, so it was given up; try a smaller "
                "size, fewer images or fewer steps.",
                str(exc),
            )
            return
        if sched.stopping:
            await sched.store.set_job_status(job.id, "queued")
            return
        await sched.store.set_job_status(job.id, "queued")
        job.status = "queued"
        sched.health.requeued.append(job.id)
        sched.queue.push(job)  # its tag puts it back at the front of its fair place
        sched.announcer.emit(
            Notice(job, "The worker running this job stopped; it will run again shortly.")
        )

    async def record_outcome(
        self,
        job: JobRecord,
        status: Any,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record a job's outcome; a store error here goes to the dispatcher, not to the user."""
        sched = self.scheduler
        if status == "finished" and not sched.deliver:
            status = "done"
        try:
            await sched.store.set_job_status(job.id, status, error=error, result=result)
            if not sched.deliver and status != "done":
                await sched.store.mark_delivered(job.id)
        except Exception as exc:
            raise StoreFailure from exc
        job.status = status

    async def finish(self, job: JobRecord, output: Any, data: dict[str, Any]) -> None:
        """Record a finished job and emit Finished."""
        await self.record_outcome(job, "finished", result=data)
        self.kills.pop(job.id, None)
        self.scheduler.announcer.emit(Finished(job, output, data))

    async def fail(self, job: JobRecord, message: str, detail: str = "") -> None:
        """Record a failed job and emit Failed."""
        # The user's words go with the result, so a delivery after a restart can show them.
        await self.record_outcome(
            job, "failed", error=detail or message, result={"message": message}
        )
        self.kills.pop(job.id, None)
        self.scheduler.announcer.emit(Failed(job, message, detail))
