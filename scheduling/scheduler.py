"""The scheduler: the durable fair queue on the event loop, handing jobs to free workers.

It owns the caps, the dispatcher, cancel and pause; workers own devices. Events, places and
ETAs go out through its Announcer (scheduling/announcer.py); each picked job runs through its
JobRunner (scheduling/job_runner.py). With one local worker it behaves exactly like the single
engine thread it replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from engine.requests import GenerationRequest
from scheduling import affinity
from scheduling.announcer import (
    ANNOUNCE_ALL,
    ANNOUNCE_SLICE,
    BASE_PIXELS,
    NO_WORKER,
    Announcer,
    Listener,
    job_units,
)
from scheduling.events import Cancelled, JobEvent, Queued
from scheduling.job_runner import JobRunner, StoreFailure
from scheduling.jobs import JobKind, JobRecord, JobStore
from scheduling.queue import TAG_KEY, FairQueue, QueueFullError
from scheduling.training_runner import TrainingRunner
from scheduling.workers.base import JobRun, Worker, WorkerInfo

log = logging.getLogger(__name__)

ImagePath = Callable[[JobRecord, int], Path]
__all__ = [
    "ANNOUNCE_ALL",
    "ANNOUNCE_SLICE",
    "BASE_PIXELS",
    "NO_WORKER",
    "EngineHealth",
    "ImagePath",
    "Listener",
    "QueueSnapshot",
    "RunningJob",
    "Scheduler",
]


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


@dataclass
class EngineHealth:
    """The dispatcher's state for /admin stats: errors it survived and the last one."""

    errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    requeued: list[int] = field(default_factory=list)

    def record(self, job: JobRecord, exc: BaseException) -> None:
        """Remember an error the dispatcher survived."""
        self.errors += 1
        self.last_error = f"job {job.id}: {type(exc).__name__}: {exc}"[:300]
        self.last_error_at = time.time()


class Scheduler:
    """Serves the fair queue with a pool of workers and reports job events on the event loop."""

    def __init__(
        self,
        generator: TextToImageGenerator,
        store: JobStore,
        config: QueueConfig | None = None,
        *,
        workers: list[Worker],
        image_path: ImagePath | None = None,
        trainer_factory: Callable[[JobRecord], Any] | None = None,
        deliver: bool = False,
        affinity_window: int = 3,
        kill_limit: int = 3,
        close_workers: bool = True,
    ) -> None:
        """``deliver=True``: a front end delivers outcomes and marks them delivered itself
        (jobs stay 'finished' until then); otherwise outcomes count as delivered at once."""
        if not workers:
            raise ValueError("the scheduler needs at least one worker")
        self.generator = generator  # validates requests at submit
        self.store = store
        self.config = config or QueueConfig()
        self.queue = FairQueue(
            store,
            per_user_cap=self.config.per_user_cap,
            global_cap=self.config.global_cap,
            weight=job_units,
        )
        self.workers = workers
        self.image_path = image_path
        self.training_runner = TrainingRunner(self, trainer_factory)
        self.deliver = deliver
        self.affinity_window = affinity_window
        self.kill_limit = kill_limit
        self.close_workers = close_workers
        self.health = EngineHealth()
        self._active: dict[str, JobRun] = {}  # worker name -> the job it runs now
        self._busy: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._overtaken: dict[int, int] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._worker_freed = asyncio.Event()
        self._aside: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.announcer = Announcer(self.queue, workers, self._active, lambda: self._stopping)
        self.job_runner = JobRunner(self, self._active)

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
            first = min(float(job.payload.get(TAG_KEY, 1.0)) for job in jobs)
            self.queue.restore_served_tag(first - 1.0)
            log.info("recovered %d unfinished job(s)", len(jobs))
        self._dispatcher = asyncio.create_task(self._dispatch(), name="engine-dispatcher")
        return len(jobs)

    async def stop(self) -> None:
        """Stop taking jobs; running ones stop at their next step and stay queued for restart."""
        self._stopping = True
        for run in self._runs():
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
        *,
        user_id: int,
        payload: dict[str, Any],
        kind: JobKind = "generate",
        guild_id: int | None = None,
        channel_id: int | None = None,
        reference: dict[str, Any] | None = None,
        admin: bool = False,
        acknowledge: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> JobRecord:
        """Queue a job durably; raises QueueFullError past a cap, ValueError for a bad request.

        ``acknowledge(job)`` runs after the job is written and before it can start; if it
        fails, the job is cancelled (nothing to deliver) and the error propagates.
        """
        if self._stopping:
            raise QueueFullError("The bot is shutting down; try again in a minute.")
        if kind == "generate":
            request = GenerationRequest.from_dict(payload.get("request", {}))
            resolved = self.generator.prepare(request)  # validate before queueing
            # Store the request fully decided, so a rerun after a restart makes the same images.
            filled = {
                **request.to_dict(),
                "negative_prompt": resolved.negative_prompt,
                "num_inference_steps": resolved.num_inference_steps,
                "guidance_scale": resolved.guidance_scale,
                "seed": resolved.seeds[0],
                "width": resolved.width,
                "height": resolved.height,
                "num_images": resolved.num_images,
                "scheduler": resolved.scheduler,
                # None: the model loaded when it was queued (the bot always names one)
                "model": resolved.model or getattr(self.generator, "model_name", None) or None,
            }
            payload = {**payload, "request": filled}
        priority = 1 if admin and self.config.admin_priority else 0

        async def before_place(job: JobRecord) -> None:
            if acknowledge is None:
                return
            try:
                await acknowledge(job)
            except BaseException:
                try:
                    await self.store.set_job_status(job.id, "cancelled", error="not acknowledged")
                    await self.store.mark_delivered(job.id)
                except Exception:
                    log.exception("could not cancel unacknowledged job %s", job.id)
                raise

        job = await self.queue.submit(
            kind=kind,
            user_id=user_id,
            payload=payload,
            guild_id=guild_id,
            channel_id=channel_id,
            reference=reference,
            priority=priority,
            check_caps=not admin,
            before_place=before_place,
        )
        self.announcer.emit(Queued(job, self.queue.position(job.id) or 1, self.eta(job.id)))
        self.announcer.tell_no_worker()
        return job

    @property
    def running(self) -> JobRun | None:
        """The job on the (first busy) worker now, or None."""
        return next(iter(self._active.values()), None)

    @property
    def training(self) -> JobRun | None:
        """The training in progress (also between its slices), or None."""
        return self.training_runner.current

    @property
    def trainer_factory(self) -> Callable[[JobRecord], Any] | None:
        """What builds a trainer for a train job."""
        return self.training_runner.trainer_factory

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping

    def position(self, job_id: int) -> int | None:
        """1-based queue position of a waiting job; 0 if it is running; None if unknown."""
        if any(run.job.id == job_id for run in self._runs()):
            return 0
        return self.queue.position(job_id)

    def _runs(self) -> list[JobRun]:
        runs: list[JobRun] = []
        for run in (self.training, *self._active.values()):
            if run is not None and all(run is not seen for seen in runs):
                runs.append(run)
        return runs

    def snapshot(self) -> QueueSnapshot:
        """Running jobs (a training between its slices included) and waiting jobs in order."""
        return QueueSnapshot(
            running=[RunningJob(run.job, run.step, run.total) for run in self._runs()],
            waiting=self.queue.order(),
            paused=self.queue.paused,
        )

    def workers_info(self) -> list[WorkerInfo]:
        """Each worker's name, node, device, state, current job and speed (for /admin workers)."""
        return [worker.info(self._active.get(worker.name)) for worker in self.workers]

    def check_caps(self, user_id: int) -> None:
        """Raise QueueFullError if this user (or the server) may not queue another job now."""
        if self._stopping:
            raise QueueFullError("The bot is shutting down; try again in a minute.")
        self.queue.check_caps(user_id)

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
            try:
                await self.job_runner.record_outcome(
                    job, "cancelled", result={"was_running": False, "step": 0}
                )
            except StoreFailure as exc:
                self.queue.push(job)
                raise exc.__cause__ from None  # type: ignore[misc]
            self.announcer.emit(Cancelled(job, was_running=False))
            return "queued"
        for run in self._runs():
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
            if worker.supports_training and not hasattr(worker, "trainer"):  # in this process
                return await worker.call(fn, *args)
        if self._aside is None:  # remote workers only: the bot's own pipeline, on its own thread
            self._aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-aside")
        return await asyncio.get_running_loop().run_in_executor(self._aside, fn, *args)

    # ----- counters and speed (kept by the announcer) -------------------------------------
    @property
    def served(self) -> int:
        """Generate jobs finished since start."""
        return self.announcer.served

    @property
    def images_made(self) -> int:
        """Images generated since start."""
        return self.announcer.images_made

    @property
    def seconds_generating(self) -> float:
        """Seconds spent generating since start."""
        return self.announcer.seconds_generating

    @property
    def seconds_per_image(self) -> float | None:
        """Average seconds per generated image since start."""
        return self.seconds_generating / self.images_made if self.images_made else None

    @property
    def _seconds_per_unit(self) -> float | None:
        """The measured seconds per pixel unit and step (tests and benches set it)."""
        return self.announcer.seconds_per_unit

    @_seconds_per_unit.setter
    def _seconds_per_unit(self, value: float | None) -> None:
        self.announcer.seconds_per_unit = value

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that workers' progress reports cross to."""
        return self.announcer.loop

    @_loop.setter
    def _loop(self, value: asyncio.AbstractEventLoop | None) -> None:
        self.announcer.loop = value

    # ----- events (also called by the training runner and workers) ------------------------
    def emit(self, event: JobEvent) -> None:
        """Deliver an event to every listener on the event loop."""
        self.announcer.emit(event)

    def progress(self, run: JobRun, step: int, total: int, preview: Any) -> None:
        """A worker finished step `step` of `total`."""
        self.announcer.progress(run, step, total, preview)

    def notice(self, run: JobRun, message: str) -> None:
        """A worker has something to tell the user."""
        self.announcer.notice(run, message)

    def _announce_positions(self) -> None:
        """Tell waiting jobs their new place, with a running ETA total."""
        self.announcer.announce_positions()

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
                await self.run_job(job, worker)
                self._backoff.pop(worker.name, None)
            except Exception as exc:
                # A storage error (locked or full disk) must not end the dispatcher: the job
                # goes back to its fair place and is tried again after a pause.
                log.exception("job %s: error outside the engine; it goes back to the queue", job.id)
                self.health.record(job, exc)
                self._active.pop(worker.name, None)
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

    def _active_worker(self, job_id: int) -> str | None:
        """The name of the worker running this job, or None."""
        return next((name for name, run in self._active.items() if run.job.id == job_id), None)

    def set_running(self, worker: Worker, run: JobRun) -> None:
        """Mark run as the job on this worker (the training runner restores its training)."""
        self._active[worker.name] = run

    # ----- running one job (the job runner; also called by the training runner) -----------
    async def run_job(self, job: JobRecord, worker: Worker) -> None:
        """Run one job on a worker and record its outcome."""
        await self.job_runner.run_job(job, worker)

    async def finish(self, job: JobRecord, output: Any, data: dict[str, Any]) -> None:
        """Record a finished job and emit Finished."""
        await self.job_runner.finish(job, output, data)

    async def fail(self, job: JobRecord, message: str, detail: str = "") -> None:
        """Record a failed job and emit Failed."""
        await self.job_runner.fail(job, message, detail)

    # Old private names, kept for callers written against the single-thread executor.
    _finish = finish
    _fail = fail
