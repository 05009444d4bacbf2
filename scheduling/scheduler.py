"""The scheduler: the durable fair queue on the event loop, handing jobs to free workers.

It owns the caps, the dispatcher, cancel and pause; workers own devices. It builds its
collaborators once and hands each what it needs: the Announcer (events, places, ETAs, speed),
Outcomes (how a job ends, in the store), the JobRunner (one job on one worker) and the
TrainingRunner (a training in slices). None of them calls back into the scheduler. With one
local worker it behaves exactly like the single engine thread it replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from engine.config import QueueConfig
from engine.requests import GenerationRequest, ResolvedRequest
from scheduling import affinity
from scheduling.active import ActiveRuns
from scheduling.announcer import Announcer, Listener, job_units
from scheduling.disk import NoGuard, SpaceGuard, is_disk_full
from scheduling.disk_wait import DiskWait
from scheduling.events import Queued
from scheduling.health import EngineHealth
from scheduling.job_runner import ImagePath, JobRunner
from scheduling.jobs import JobRecord, JobStore, NewJob
from scheduling.outcomes import Outcomes, StoreFailure
from scheduling.queue import FairQueue, QueueFullError
from scheduling.training_runner import TrainerFactory, TrainingRunner
from scheduling.workers.base import Worker, WorkerInfo

log = logging.getLogger(__name__)

SHUTTING_DOWN = "The bot is shutting down; try again in a minute."


class RequestChecker(Protocol):
    """What submit needs of the engine: a request's decided form (raises ValueError if bad)."""

    def prepare(self, request: GenerationRequest) -> ResolvedRequest:
        """Decide every field of a request and validate it."""
        ...


@dataclass(frozen=True)
class RunningJob:
    """A job on the engine now (a training stays listed while images run between its slices)."""

    job: JobRecord
    step: int
    total: int


@dataclass(frozen=True)
class QueueSnapshot:
    """What the cogs may read about the queue: running jobs, waiting jobs in order, paused."""

    running: list[RunningJob]
    waiting: list[JobRecord]
    paused: bool

    def running_ids(self) -> set[int]:
        """Ids of the running jobs."""
        return {r.job.id for r in self.running}

    def waiting_for(self, user_id: int) -> list[JobRecord]:
        """The user's waiting jobs, in the order they will run."""
        return [job for job in self.waiting if job.user_id == user_id]


@dataclass(frozen=True)
class SchedulerStats:
    """Counters since start, for /admin stats."""

    served: int
    images_made: int
    seconds_generating: float

    @property
    def seconds_per_image(self) -> float | None:
        """Average seconds per generated image since start."""
        return self.seconds_generating / self.images_made if self.images_made else None


class Scheduler:
    """Serves the fair queue with a pool of workers and reports job events on the event loop."""

    def __init__(
        self,
        checker: RequestChecker,
        store: JobStore,
        config: QueueConfig | None = None,
        *,
        workers: list[Worker],
        image_path: ImagePath | None = None,
        trainer_factory: TrainerFactory | None = None,
        deliver: bool = False,
        affinity_window: int = 3,
        kill_limit: int = 3,
        close_workers: bool = True,
        space: SpaceGuard | None = None,
    ) -> None:
        """``checker`` validates requests at submit (the bot's generator); ``deliver=True``: a
        front end delivers outcomes and marks them delivered itself (jobs stay 'finished' until
        then); otherwise outcomes count as delivered at once. ``space`` refuses new work on a
        nearly full disk and words a full outputs disk (none: no threshold)."""
        if not workers:
            raise ValueError("the scheduler needs at least one worker")
        self.checker = checker
        self.store = store
        self.config = config or QueueConfig()
        self.queue = FairQueue(
            store,
            per_user_cap=self.config.per_user_cap,
            global_cap=self.config.global_cap,
            weight=job_units,
        )
        self.workers = workers
        self.affinity_window = affinity_window
        self.close_workers = close_workers
        self.health = EngineHealth()
        self.active = ActiveRuns()
        self.announcer = Announcer(self.queue, workers, self.active, lambda: self._stopping)
        self.outcomes = Outcomes(store, self.announcer, deliver=deliver)
        self.space = space or NoGuard()
        self.disk_wait = DiskWait(self.space, self.announcer)
        training = TrainingRunner(
            outcomes=self.outcomes,
            announcer=self.announcer,
            queue=self.queue,
            active=self.active,
            config=self.config,
            trainer_factory=trainer_factory,
            stopping=lambda: self._stopping,
        )
        self.runner = JobRunner(
            store=store,
            queue=self.queue,
            announcer=self.announcer,
            outcomes=self.outcomes,
            active=self.active,
            training=training,
            health=self.health,
            disk=self.disk_wait,
            config=self.config,
            kill_limit=kill_limit,
            image_path=image_path,
            stopping=lambda: self._stopping,
        )
        self._busy: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._overtaken: dict[int, int] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._worker_freed = asyncio.Event()
        self._aside: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False

    # ----- wiring -----------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call listener(event) on the event loop for every job event (sync or async)."""
        self.announcer.subscribe(listener)

    async def start(self) -> int:
        """Put unfinished jobs back in the queue (original order) and start serving; return count."""
        self.announcer.loop = asyncio.get_running_loop()
        for worker in self.workers:
            await worker.start()
        jobs = await self.store.unfinished_jobs()
        for job in jobs:
            if job.status == "running":
                await self.store.set_job_status(job.id, "queued")
                job.status = "queued"
            self.queue.push(job)
        if jobs:
            first = min(job.tag if job.tag is not None else 1.0 for job in jobs)
            self.queue.restore_served_tag(first - 1.0)
            log.info("recovered %d unfinished job(s)", len(jobs))
        self._dispatcher = asyncio.create_task(self._dispatch(), name="engine-dispatcher")
        self._dispatcher.add_done_callback(_log_crash)
        return len(jobs)

    async def stop(self) -> None:
        """Stop taking jobs; running ones stop at their next step and stay queued for restart."""
        self._stopping = True
        for run in self.active.all():
            run.cancel.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._serving:
            _, pending = await asyncio.wait(set(self._serving), timeout=120)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.close_workers:
            for worker in self.workers:
                await worker.close()
        if self._aside is not None:
            self._aside.shutdown(wait=True)
        await self.announcer.wait_listeners()

    async def add_worker(self, worker: Worker) -> None:
        """Start a worker that joined while serving (a new node in the cluster) and use it."""
        await worker.start()
        if self._stopping:
            await worker.close()
            return
        self.workers.append(worker)
        log.info("worker %s joined the pool (%d workers)", worker.name, len(self.workers))
        self._worker_freed.set()

    # ----- the public queue API (event loop only, O(log n + sqrt n) per call) ---------------
    async def submit(
        self,
        new: NewJob,
        *,
        admin: bool = False,
        acknowledge: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> JobRecord:
        """Queue a job durably; raises QueueFullError past a cap, ValueError for a bad request.

        ``acknowledge(job)`` runs after the job is written and before it can start; if it
        fails, the job is cancelled (nothing to deliver) and the error propagates.
        """
        if self._stopping:
            raise QueueFullError(SHUTTING_DOWN)
        self.check_room()
        if isinstance(new.work, GenerationRequest):
            new = replace(new, work=self._decided(new.work))
        new = replace(new, priority=1 if admin and self.config.admin_priority else 0)

        async def before_place(job: JobRecord) -> None:
            if acknowledge is None:
                return
            try:
                await acknowledge(job)
            except BaseException:
                # In a task of its own: the caller's time budget for its answer (a locked
                # database, storage/busy.py) must not cut short the cancel of a written job.
                cancel = asyncio.ensure_future(self._cancel_unacknowledged(job))
                await asyncio.shield(cancel)
                raise

        job = await self.queue.submit(new, check_caps=not admin, before_place=before_place)
        self.announcer.emit(Queued(job, self.queue.position(job.id) or 1, self.eta(job.id)))
        self.announcer.tell_no_worker()
        return job

    async def _cancel_unacknowledged(self, job: JobRecord) -> None:
        """A written job whose command could not be acknowledged: cancelled, nothing to deliver."""
        try:
            await self.store.set_job_status(job.id, "cancelled", error="not acknowledged")
            await self.store.mark_delivered(job.id)
        except Exception:
            log.exception("could not cancel unacknowledged job %s", job.id)

    def _decided(self, request: GenerationRequest) -> GenerationRequest:
        """The request with every field decided (validated), so a rerun makes the same images."""
        resolved = self.checker.prepare(request)
        return replace(
            request,
            negative_prompt=resolved.negative_prompt,
            num_inference_steps=resolved.num_inference_steps,
            guidance_scale=resolved.guidance_scale,
            seed=resolved.seeds[0],
            width=resolved.width,
            height=resolved.height,
            num_images=resolved.num_images,
            scheduler=resolved.scheduler,
            # None: the model loaded when it was queued (the bot always names one)
            model=resolved.model or getattr(self.checker, "model_name", None) or None,
        )

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping

    def position(self, job_id: int) -> int | None:
        """1-based queue position of a waiting job; 0 if it is running; None if unknown."""
        if any(run.job.id == job_id for run in self.active.all()):
            return 0
        return self.queue.position(job_id)

    def snapshot(self) -> QueueSnapshot:
        """Running jobs (a training between its slices included) and waiting jobs in order."""
        return QueueSnapshot(
            running=[RunningJob(run.job, run.step, run.total) for run in self.active.all()],
            waiting=self.queue.order(),
            paused=self.queue.paused,
        )

    def workers_info(self) -> list[WorkerInfo]:
        """Each worker's name, node, device, state, current job and speed (for /admin workers)."""
        return [worker.info(self.active.on(worker.name)) for worker in self.workers]

    def stats(self) -> SchedulerStats:
        """Jobs served, images made and seconds spent generating since start."""
        a = self.announcer
        return SchedulerStats(a.served, a.images_made, a.seconds_generating)

    def check_caps(self, user_id: int) -> None:
        """Raise QueueFullError if this user (or the server) may not queue another job now."""
        if self._stopping:
            raise QueueFullError(SHUTTING_DOWN)
        self.queue.check_caps(user_id)

    def check_room(self) -> None:
        """Raise DiskFull (in words naming the disk) if a disk the bot writes to is too full."""
        self.space.admit()

    @property
    def dispatcher_alive(self) -> bool:
        """Whether the dispatcher task is serving the queue."""
        return self._dispatcher is not None and not self._dispatcher.done()

    def eta(self, job_id: int) -> float | None:
        """Seconds until a waiting job finishes, from the measured speed; None before any job ran."""
        return self.announcer.eta(job_id)

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a job: 'queued' (removed at once), 'running' (stops at next step) or None."""
        job = self.queue.remove(job_id)
        if job is not None:
            try:  # a training queued again after a restart may have checkpoints already
                await self.outcomes.cancel(job, was_running=False)
            except StoreFailure as exc:
                self.queue.push(job)
                raise exc.__cause__ from None  # type: ignore[misc]
            return "queued"
        for run in self.active.all():
            if run.job.id == job_id:
                run.cancel.set()
                return "running"
        return None

    def pause(self) -> None:
        """Stop starting new jobs (the running ones finish)."""
        self.queue.pause()

    def resume(self) -> None:
        """Start jobs again."""
        self.queue.resume()

    async def run_on_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) beside the bot's pipeline, between jobs (e.g. to try loading a LoRA)."""
        for worker in self.workers:
            if worker.shares_process:
                return await worker.call(fn, *args)
        if self._aside is None:  # remote workers only: the bot's own pipeline, on its own thread
            self._aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-aside")
        return await asyncio.get_running_loop().run_in_executor(self._aside, fn, *args)

    # ----- the dispatcher ---------------------------------------------------------------
    def _free_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.name not in self._busy and w.alive]

    async def _dispatch(self) -> None:
        while not self._stopping:
            if not self._free_workers():
                self._worker_freed.clear()
                await self._worker_freed.wait()
                continue
            await self.queue.wait_available()
            free = self._free_workers()
            if not free:
                continue
            job, worker = self._pick(free)
            self._busy.add(worker.name)
            task = asyncio.create_task(self._serve(job, worker), name=f"job-{job.id}")
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
            await asyncio.sleep(0)  # let the job start before the next pick

    def _pick(self, free: list[Worker]) -> tuple[JobRecord, Worker]:
        """The next job in fair order, or one a little later that a free worker suits better."""
        head = self.queue.head(self.affinity_window + 1)
        index, worker = affinity.pick(
            head, free, self._overtaken, self.affinity_window, loras=len(self.workers) > 1
        )
        taken = self.queue.take(head[index].id)
        assert taken is not None
        self._overtaken.pop(taken.id, None)
        return taken, worker

    async def _serve(self, job: JobRecord, worker: Worker) -> None:
        """Run one job on a worker; a store error sends the job back to its fair place."""
        try:
            try:
                await self.runner.run_job(job, worker)
                self._backoff.pop(worker.name, None)
            except Exception as exc:
                # A storage error (locked or full disk) must not end the dispatcher: the job
                # goes back to its fair place and is tried again after a pause.
                if is_disk_full(exc):  # expected on a full disk: said in words, no traceback
                    log.warning("job %s: %s; it goes back to the queue", job.id, exc)
                else:
                    log.exception("job %s: error outside the engine; back to the queue", job.id)
                self.health.record(job, exc)
                self.active.end(worker.name)
                job.status = "queued"
                self.queue.push(job)
                backoff = self._backoff.get(worker.name, 0.5)
                self._backoff[worker.name] = min(backoff * 2, 30.0)
                await asyncio.sleep(backoff)
            if not worker.alive and not self._stopping:
                self.announcer.tell_no_worker()
                await worker.wait_alive()
                self.announcer.tell_no_worker()  # a worker is back: the next outage tells again
        finally:
            self._busy.discard(worker.name)
            self._worker_freed.set()


def _log_crash(task: asyncio.Task[None]) -> None:
    """A dispatcher that ended by an error says so in the log (/admin stats shows it stopped)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the dispatcher stopped; no job will start", exc_info=task.exception())
