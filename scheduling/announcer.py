"""What the scheduler tells the outside: job events, queue places with ETAs, the no-worker notice.

The Announcer also keeps the measured speed the ETAs come from. The scheduler owns one and
hands it the queue, the workers and the running jobs (ActiveRuns) it reads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from engine.requests import GenerationResult
from scheduling.active import ActiveRuns
from scheduling.events import JobEvent, Notice, Progress, Queued
from scheduling.jobs import JobRecord
from scheduling.queue import FairQueue
from scheduling.workers.base import JobRun, Worker

log = logging.getLogger(__name__)

Listener = Callable[[JobEvent], Any]
BASE_PIXELS = 512 * 512
# Each job start re-announces every waiting job's place while at most ANNOUNCE_ALL wait (the
# default global cap); past that, the first ANNOUNCE_SLICE and ANNOUNCE_SLICE more from a cursor
# sweeping the rest: O(1) per start however long the queue.
ANNOUNCE_ALL = 100
ANNOUNCE_SLICE = 20
NO_WORKER = "No image worker is online right now; your job waits and starts when one is back."


class Announcer:
    """Sends job events to listeners, announces places and ETAs, and keeps the measured speed."""

    def __init__(
        self,
        queue: FairQueue,
        workers: list[Worker],
        active: ActiveRuns,
        stopping: Callable[[], bool],
    ) -> None:
        """``workers`` is the scheduler's pool (it grows); ``stopping()`` says whether it stops."""
        self.queue = queue
        self.workers = workers
        self.active = active
        self.stopping = stopping
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the scheduler's start()
        self.seconds_per_unit: float | None = None
        self.served = 0
        self.images_made = 0
        self.seconds_generating = 0.0
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._told_no_worker: set[int] = set()  # waiting jobs told so in the current outage
        self._announce_cursor = ANNOUNCE_SLICE
        self._run_units: dict[int, float] = {}

    # ----- events ---------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call listener(event) on the event loop for every job event (sync or async)."""
        self._listeners.append(listener)

    def emit(self, event: JobEvent) -> None:
        """Deliver an event to every listener (on the event loop)."""
        for listener in list(self._listeners):
            try:
                outcome = listener(event)
            except Exception:
                log.exception("event listener failed on %s", type(event).__name__)
                continue
            if outcome is not None and inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    async def wait_listeners(self) -> None:
        """Wait for the listener tasks still running (at shutdown)."""
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event listener task failed", exc_info=task.exception())

    def _emit_threadsafe(self, event: JobEvent) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.emit, event)

    # The ProgressSink that workers report to (from any thread).
    def progress(self, run: JobRun, step: int, total: int, preview: Any) -> None:
        """A worker finished step `step` of `total`."""
        rate = self.seconds_per_unit
        eta = None if rate is None else _seconds_left(run, rate)
        self._emit_threadsafe(Progress(run.job, step, total, eta, preview))

    def notice(self, run: JobRun, message: str) -> None:
        """A worker has something to tell the user."""
        self._emit_threadsafe(Notice(run.job, message))

    # ----- places and ETAs ------------------------------------------------------------------
    def eta(self, job_id: int) -> float | None:
        """Seconds until a waiting job finishes, from the measured speed; None before any job ran."""
        rate = self.seconds_per_unit
        if rate is None:
            return None
        total = self._running_seconds_left(rate) + self.queue.weight_ahead(job_id) * rate
        job = self.queue.get_job(job_id)
        if job is not None:
            total += job_units(job) * rate
        return total / self._parallel()

    def announce_positions(self) -> None:
        """Tell waiting jobs their new place, with a running ETA total.

        Up to ANNOUNCE_ALL waiting: every one. Past that: the first ANNOUNCE_SLICE and the next
        ANNOUNCE_SLICE from a cursor that sweeps the rest, so each job still hears its place
        every len(queue) / ANNOUNCE_SLICE starts and a start costs the same at any length.
        """
        rate = self.seconds_per_unit
        base = 0.0 if rate is None else self._running_seconds_left(rate)
        parallel = self._parallel()
        waiting = len(self.queue)
        if waiting <= ANNOUNCE_ALL:
            self._announce_span(0, waiting, base, rate, parallel)
            return
        self._announce_span(0, ANNOUNCE_SLICE, base, rate, parallel)
        if not ANNOUNCE_SLICE <= self._announce_cursor < waiting:
            self._announce_cursor = ANNOUNCE_SLICE
        start = self._announce_cursor
        self._announce_cursor += ANNOUNCE_SLICE
        self._announce_span(start, start + ANNOUNCE_SLICE, base, rate, parallel)

    def _announce_span(
        self, start: int, stop: int, base: float, rate: float | None, parallel: int
    ) -> None:
        jobs = self.queue.weighted_slice(start, stop)
        total = base
        if rate is not None and jobs and start:
            total += self.queue.weight_ahead(jobs[0][0].id) * rate
        for index, (job, units) in enumerate(jobs, start=start + 1):
            eta = None
            if rate is not None:
                total += units * rate
                eta = total / parallel
            self.emit(Queued(job, index, eta))

    def tell_no_worker(self) -> None:
        """With no worker alive, tell each waiting job once per outage that it waits for one."""
        if self.stopping() or any(worker.alive for worker in self.workers):
            self._told_no_worker.clear()
            return
        for job in self.queue.order():
            if job.id not in self._told_no_worker:
                self._told_no_worker.add(job.id)
                self.emit(Notice(job, NO_WORKER))

    def _running_seconds_left(self, rate: float) -> float:
        # Called per submit and per start with up to one run per worker: the pixel units of
        # each running job are computed once, not per call.
        units = self._run_units
        total = 0.0
        for run in self.active:
            job_units = units.get(run.job.id)
            if job_units is None:
                job_units = units[run.job.id] = _pixel_units(run.job)
            left = run.total - run.step
            if left > 0:
                total += left * job_units
        if len(units) > 2 * len(self.active) + 16:
            self._run_units = {r.job.id: units[r.job.id] for r in self.active}
        return total * rate

    def _parallel(self) -> int:
        return max(1, sum(1 for worker in self.workers if worker.alive))

    # ----- the speed record -----------------------------------------------------------------
    def record_speed(self, job: JobRecord, result: GenerationResult) -> None:
        """Fold a finished generation into the measured speed and the counters."""
        units = _pixel_units(job) * result.request.num_inference_steps
        per_unit = result.seconds / max(units, 1e-9)
        old = self.seconds_per_unit
        self.seconds_per_unit = per_unit if old is None else 0.7 * old + 0.3 * per_unit
        self.served += 1
        self.images_made += len(result.images)
        self.seconds_generating += result.seconds


def job_units(job: JobRecord) -> float:
    """A job's weight in the queue: pixel units times steps (0 for a training)."""
    if job.kind != "generate":
        return 0.0
    return _pixel_units(job) * (job.request.num_inference_steps or 25)


def _pixel_units(job: JobRecord) -> float:
    if job.kind != "generate":
        return 1.0  # a training step counts as one step of a 512 px image
    request = job.request
    width = request.width or 512
    height = request.height or 512
    return width * height * (request.num_images or 1) / BASE_PIXELS


def _seconds_left(run: JobRun | None, rate: float) -> float:
    """Estimated seconds until the running generation is done (0 when nothing runs)."""
    if run is None:
        return 0.0
    return max(0, run.total - run.step) * rate * _pixel_units(run.job)
