"""The engine executor: one thread owns the pipeline and runs every job from the fair queue."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.config import QueueConfig
from engine.errors import EngineError, GenerationCancelled
from engine.events import Cancelled, Failed, Finished, JobEvent, Notice, Progress, Queued, Started
from engine.generator import MEMORY_RUNGS, TextToImageGenerator
from engine.jobs import JobKind, JobRecord, JobStore
from engine.metadata import save_png
from engine.queue import TAG_KEY, FairQueue, QueueFullError
from engine.requests import GenerationRequest, GenerationResult, ResolvedRequest
from engine.training_slices import TrainingSlices

log = logging.getLogger(__name__)

Listener = Callable[[JobEvent], Any]
ImagePath = Callable[[JobRecord, int], Path]
# Test hook: called with the memory level before each attempt; may raise an OOM error.
FaultInjector = Callable[[int], None]
BASE_PIXELS = 512 * 512


class OutOfMemoryExhausted(Exception):
    """Every rung of the out-of-memory ladder failed."""


class _StoreFailure(Exception):
    """Recording an outcome failed (its cause is the store's error)."""


@dataclass
class _Running:
    job: JobRecord
    cancel: threading.Event
    step: int = 0
    total: int = 0


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


class EngineExecutor(TrainingSlices):
    """Serves the fair queue on one engine thread and reports job events on the event loop."""

    def __init__(
        self,
        generator: TextToImageGenerator,
        store: JobStore,
        config: QueueConfig | None = None,
        *,
        image_path: ImagePath | None = None,
        trainer_factory: Callable[[JobRecord], Any] | None = None,
        fault_injector: FaultInjector | None = None,
        deliver: bool = False,
    ) -> None:
        """``deliver=True``: a front end delivers outcomes and marks them delivered itself
        (jobs stay 'finished' until then); otherwise outcomes count as delivered at once."""
        self.generator = generator
        self.store = store
        self.config = config or QueueConfig()
        self.queue = FairQueue(
            store, per_user_cap=self.config.per_user_cap, global_cap=self.config.global_cap
        )
        self.image_path = image_path
        self.trainer_factory = trainer_factory
        self.fault_injector = fault_injector
        self.deliver = deliver
        self.health = EngineHealth()
        self.running: _Running | None = None
        self.training: _Running | None = None
        self.served = 0
        self.images_made = 0
        self.seconds_generating = 0.0
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._seconds_per_unit: float | None = None
        self._levels: dict[tuple[int, int], int] = {}

    # ----- wiring -----------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call listener(event) on the event loop for every job event (sync or async)."""
        self._listeners.append(listener)

    async def start(self) -> int:
        """Put unfinished jobs back in the queue (original order) and start serving; return count."""
        self._loop = asyncio.get_running_loop()
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
        """Stop taking jobs; the running one stops at its next step and stays queued for restart."""
        self._stopping = True
        if self.running is not None:
            self.running.cancel.set()
        if self._dispatcher is not None:
            if self.running is None:
                self._dispatcher.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._dispatcher), timeout=120)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                self._dispatcher.cancel()
        self._thread.shutdown(wait=True)
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)

    # ----- the public queue API (event loop only, all O(waiting jobs)) -----------------------
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
        self._emit(Queued(job, self.queue.position(job.id) or 1, self.eta(job.id)))
        return job

    def position(self, job_id: int) -> int | None:
        """1-based queue position of a waiting job; 0 if it is running; None if unknown."""
        if any(run.job.id == job_id for run in self._runs()):
            return 0
        return self.queue.position(job_id)

    def _runs(self) -> list[_Running]:
        runs = [run for run in (self.training, self.running) if run is not None]
        return runs if len(runs) < 2 or runs[0] is not runs[1] else runs[:1]

    def snapshot(self) -> QueueSnapshot:
        """Running jobs (a training between its slices included) and waiting jobs in order."""
        return QueueSnapshot(
            running=[RunningJob(run.job, run.step, run.total) for run in self._runs()],
            waiting=self.queue.order(),
            paused=self.queue.paused,
        )

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
        rate = self._seconds_per_unit
        if rate is None:
            return None
        total = _seconds_left(self.running, rate)
        for job in self.queue.jobs_ahead(job_id):
            total += _job_units(job) * rate
        job = self.queue.get_job(job_id)
        if job is not None:
            total += _job_units(job) * rate
        return total

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a job: 'queued' (removed at once), 'running' (stops at next step) or None."""
        job = self.queue.remove(job_id)
        if job is not None:
            try:
                await self._outcome(job, "cancelled", result={"was_running": False, "step": 0})
            except _StoreFailure as exc:
                self.queue.push(job)
                raise exc.__cause__ from None  # type: ignore[misc]
            self._emit(Cancelled(job, was_running=False))
            return "queued"
        for run in self._runs():
            if run.job.id == job_id:
                run.cancel.set()
                return "running"
        return None

    def pause(self) -> None:
        """Stop starting new jobs (the running one finishes)."""
        self.queue.pause()

    def resume(self) -> None:
        """Start jobs again."""
        self.queue.resume()

    async def run_on_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the engine thread, between jobs (e.g. to try loading a LoRA)."""
        return await self._in_thread(fn, *args)

    @property
    def seconds_per_image(self) -> float | None:
        """Average seconds per generated image since start."""
        return self.seconds_generating / self.images_made if self.images_made else None

    # ----- events -------------------------------------------------------------------------
    def _emit(self, event: JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                outcome = listener(event)
            except Exception:
                log.exception("event listener failed on %s", type(event).__name__)
                continue
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event listener task failed", exc_info=task.exception())

    def _emit_threadsafe(self, event: JobEvent) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._emit, event)

    def _announce_positions(self) -> None:
        """Tell every waiting job its new place; one pass with a running ETA total."""
        rate = self._seconds_per_unit
        total = 0.0 if rate is None else _seconds_left(self.running, rate)
        for index, job in enumerate(self.queue.order(), start=1):
            eta = None
            if rate is not None:
                total += _job_units(job) * rate
                eta = total
            self._emit(Queued(job, index, eta))

    # ----- the dispatcher ---------------------------------------------------------------
    async def _dispatch(self) -> None:
        backoff = 0.5
        while not self._stopping:
            job = await self.queue.get()
            try:
                await self._run_job(job)
                backoff = 0.5
            except Exception as exc:
                # A storage error (locked or full disk) must not end the dispatcher: the job
                # goes back to its fair place and is tried again after a pause.
                log.exception("job %s: error outside the engine; it goes back to the queue", job.id)
                self.health.record(job, exc)
                self.running = None
                job.status = "queued"
                self.queue.push(job)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, *args)

    async def _run_job(self, job: JobRecord) -> None:
        if job.attempts >= self.config.max_attempts:
            await self._fail(job, f"This job was tried {job.attempts} times and never finished.")
            return
        await self.store.set_job_status(job.id, "running")
        job.attempts += 1
        job.status = "running"
        run = _Running(job, threading.Event())
        self.running = run
        log.info("job %s (%s) started for user %s", job.id, job.kind, job.user_id)
        self._emit(Started(job))
        self._announce_positions()
        try:
            if job.kind == "train":
                await self._run_training(job, run)
            else:
                result, data = await self._in_thread(self._generate_sync, run)
                await self._finish(job, result, data)
        except GenerationCancelled:
            if self._stopping:
                await self.store.set_job_status(job.id, "queued")
                log.info("job %s interrupted by shutdown; it will run again after restart", job.id)
            else:
                await self._outcome(
                    job, "cancelled", result={"was_running": True, "step": run.step}
                )
                self._emit(Cancelled(job, was_running=True, step=run.step))
        except _StoreFailure as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except OutOfMemoryExhausted as exc:
            await self._fail(job, str(exc))
        except (EngineError, ValueError) as exc:
            await self._fail(job, str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            await self._fail(
                job,
                "Something went wrong while making this image; the error was logged.",
                repr(exc),
            )
        finally:
            self.running = None

    async def _outcome(
        self,
        job: JobRecord,
        status: Any,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record a job's outcome; a store error here goes to the dispatcher, not to the user."""
        if status == "finished" and not self.deliver:
            status = "done"
        try:
            await self.store.set_job_status(job.id, status, error=error, result=result)
            if not self.deliver and status != "done":
                await self.store.mark_delivered(job.id)
        except Exception as exc:
            raise _StoreFailure from exc
        job.status = status

    async def _finish(self, job: JobRecord, output: Any, data: dict[str, Any]) -> None:
        await self._outcome(job, "finished", result=data)
        self._emit(Finished(job, output, data))

    async def _fail(self, job: JobRecord, message: str, detail: str = "") -> None:
        # The user's words go with the result, so a delivery after a restart can show them.
        await self._outcome(job, "failed", error=detail or message, result={"message": message})
        self._emit(Failed(job, message, detail))

    # ----- generation (engine thread) ----------------------------------------------------
    def _generate_sync(self, run: _Running) -> tuple[GenerationResult, dict[str, Any]]:
        job = run.job
        request = GenerationRequest.from_dict(job.payload.get("request", {}))
        resolved = self.generator.prepare(request)
        size = (resolved.width, resolved.height)
        level = self._levels.get(size, 0)
        last_emit = 0.0
        interval = self.config.progress_interval_s

        def progress(step: int, total: int, latents: Any) -> None:
            nonlocal last_emit
            run.step, run.total = step, total
            now = time.monotonic()
            if step < total and now - last_emit < interval:
                return
            last_emit = now
            preview = None
            if self.config.previews and step < total:
                preview = self.generator.preview(latents, self.config.preview_size)
            rate = self._seconds_per_unit
            eta = None if rate is None else _seconds_left(run, rate)
            self._emit_threadsafe(Progress(job, step, total, eta, preview))

        while True:
            try:
                self.generator.set_memory_level(level)
                if self.fault_injector is not None:
                    self.fault_injector(level)
                if level >= len(MEMORY_RUNGS):
                    result = self._one_by_one(resolved, progress, run.cancel)
                else:
                    result = self.generator.run(resolved, progress=progress, cancel=run.cancel)
                break
            except torch.cuda.OutOfMemoryError:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if level >= len(MEMORY_RUNGS):
                    raise OutOfMemoryExhausted(
                        "The GPU ran out of memory even with every saving turned on. "
                        "Try a smaller size, fewer images, or fewer steps."
                    ) from None
                level += 1
                message = (
                    f"The GPU ran out of memory; retrying with {MEMORY_RUNGS[level - 1]} "
                    "(slower, uses less memory)."
                )
                log.warning("job %s: out of memory, memory level %d", job.id, level)
                self._emit_threadsafe(Notice(job, message))
        if level:
            self._levels[size] = level
        paths = self._save(job, result)
        result.paths = paths
        units = _pixel_units(job.payload) * resolved.num_inference_steps
        per_unit = result.seconds / max(units, 1e-9)
        old = self._seconds_per_unit
        self._seconds_per_unit = per_unit if old is None else 0.7 * old + 0.3 * per_unit
        self.served += 1
        self.images_made += len(result.images)
        self.seconds_generating += result.seconds
        data = {
            "seeds": result.seeds,
            "paths": [str(p) for p in paths],
            "parameters": result.parameters,
            "seconds": round(result.seconds, 3),
            "seconds_per_step": round(result.seconds_per_step, 4),
            "warnings": result.warnings,
            "nsfw": result.nsfw,
            "memory_level": level,
            "model": self.generator.model_name,
        }
        return result, data

    def _one_by_one(
        self, resolved: ResolvedRequest, progress: Any, cancel: threading.Event
    ) -> GenerationResult:
        from dataclasses import replace

        parts = [
            self.generator.run(replace(resolved, seeds=(seed,)), progress=progress, cancel=cancel)
            for seed in resolved.seeds
        ]
        first = parts[0]
        return GenerationResult(
            images=[img for p in parts for img in p.images],
            seeds=[s for p in parts for s in p.seeds],
            parameters=[t for p in parts for t in p.parameters],
            request=resolved,
            seconds=sum(p.seconds for p in parts),
            seconds_per_step=first.seconds_per_step,
            warnings=first.warnings,
            nsfw=[f for p in parts for f in p.nsfw],
        )

    def _save(self, job: JobRecord, result: GenerationResult) -> list[Path]:
        if self.image_path is None:
            return self.generator.save_images(result.images, prefix=f"job{job.id}")
        paths = []
        for index, (image, text) in enumerate(zip(result.images, result.parameters, strict=True)):
            path = self.image_path(job, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            paths.append(save_png(image, path, text))
        return paths


def _pixel_units(payload: dict[str, Any]) -> float:
    request = payload.get("request", {})
    width = request.get("width") or 512
    height = request.get("height") or 512
    count = request.get("num_images") or 1
    return width * height * count / BASE_PIXELS


def _seconds_left(run: _Running | None, rate: float) -> float:
    """Estimated seconds until the running generation is done (0 when nothing runs)."""
    if run is None:
        return 0.0
    return max(0, run.total - run.step) * rate * _pixel_units(run.job.payload)


def _job_units(job: JobRecord) -> float:
    if job.kind != "generate":
        return 0.0
    steps = job.payload.get("request", {}).get("num_inference_steps") or 25
    return _pixel_units(job.payload) * steps
