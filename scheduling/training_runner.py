"""Training jobs on a worker: slices of steps, with /imagine jobs served in between."""

from __future__ import annotations

import threading
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import GenerationCancelled
from scheduling import affinity
from scheduling.events import Notice, Progress
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun, Worker

if TYPE_CHECKING:
    from scheduling.scheduler import Scheduler


class TrainingRunner:
    """Runs one training job in slices on its worker; the scheduler calls run()."""

    def __init__(self, scheduler: Scheduler, trainer_factory: Any) -> None:
        self.scheduler = scheduler
        self.trainer_factory = trainer_factory
        self.current: JobRun | None = None  # visible to cancel and /queue between slices

    async def run(self, job: JobRecord, run: JobRun, worker: Worker) -> None:
        """Train to the end (or cancel); finishes or raises like a generation."""
        sched = self.scheduler
        # 1. check the worker can train
        if self.trainer_factory is None:
            await sched.fail(job, "Training is not available yet.")
            return
        if not worker.supports_training:
            await sched.fail(job, "This worker cannot run trainings.")
            return
        # 2. build the trainer: on the worker's thread, or on its actor (a remote worker)
        if hasattr(worker, "trainer"):
            trainer: Any = await worker.trainer(job)
        else:
            trainer = _OnThread(worker, await worker.call(self.trainer_factory, job))
        self.current = run
        try:
            await trainer.setup()
            if trainer.step:
                sched.emit(
                    Notice(job, f"Training resumes from its checkpoint at step {trainer.step}.")
                )
            # 3. slices of steps, waiting /imagine jobs served in between
            while True:
                if sched.stopping:  # shutdown while /imagine jobs ran between slices
                    raise GenerationCancelled("training interrupted by shutdown")
                status = await trainer.train_steps(sched.config.train_slice_steps, run.cancel)
                run.step, run.total = status.step, status.max_steps
                eta = None
                if status.seconds_per_step is not None:
                    eta = (status.max_steps - status.step) * status.seconds_per_step
                sched.emit(Progress(job, status.step, status.max_steps, eta, None, status.loss))
                if run.cancel.is_set():
                    raise GenerationCancelled(f"training stopped at step {status.step}")
                if status.done:
                    break
                await self._serve_between_slices(trainer, run, worker)
            output = await trainer.finish()
        except BaseException:
            await trainer.abort()
            raise
        finally:
            self.current = None
        # 4. the LoRA is registered by the store in the same transaction that finishes the job
        await sched.finish(job, output, train_output_data(output))

    async def _serve_between_slices(self, trainer: Any, training: JobRun, worker: Worker) -> None:
        """Run the /imagine jobs that wait, with the adapter under training switched off."""
        sched = self.scheduler
        queue = sched.queue
        # Jobs for another base model wait for the end of the training: the trainer holds its
        # model, and a second resident model would not fit a small card.
        resident = affinity.worker_model(worker)

        def same_model(job: JobRecord) -> bool:
            wanted = affinity.job_model(job)
            return wanted is None or resident is None or wanted.lower() == resident.lower()

        if not queue.has_waiting("generate", same_model) or queue.paused:
            return
        await trainer.suspend()
        try:
            while not sched.stopping and not queue.paused:
                job = queue.pop_next("generate", same_model)
                if job is None:
                    break
                await sched.run_job(job, worker)
        finally:
            sched.set_running(worker, training)
            await trainer.resume()


class _OnThread:
    """A trainer of this process, each call run on its worker's engine thread."""

    def __init__(self, worker: Worker, trainer: Any) -> None:
        self.worker = worker
        self.trainer = trainer

    @property
    def step(self) -> int:
        """The step setup resumed from (0: from scratch)."""
        return int(getattr(self.trainer, "step", 0) or 0)

    async def setup(self) -> None:
        """Load data and model parts, resume from the newest checkpoint."""
        await self.worker.call(self.trainer.setup)

    async def train_steps(self, n: int, cancel: threading.Event) -> Any:
        """Run up to n steps."""
        return await self.worker.call(self.trainer.train_steps, n, cancel)

    async def suspend(self) -> None:
        """Hand the pipeline back to generations."""
        await self.worker.call(self.trainer.suspend)

    async def resume(self) -> None:
        """Make the training adapter active again."""
        await self.worker.call(self.trainer.resume)

    async def finish(self) -> Any:
        """Write the final LoRA."""
        return await self.worker.call(self.trainer.finish)

    async def abort(self) -> None:
        """Stop, keeping the checkpoints."""
        await self.worker.call(self.trainer.abort)


def train_output_data(output: Any) -> dict[str, Any]:
    """A JSON-friendly summary of a finished training (paths as strings, no loss curve)."""
    raw = asdict(output) if is_dataclass(output) else dict(output)
    raw.pop("loss_curve", None)
    return {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}
