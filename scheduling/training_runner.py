"""Training jobs on a worker: slices of steps, with /imagine jobs served in between."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from engine.config import QueueConfig
from engine.errors import GenerationCancelled
from scheduling import affinity
from scheduling.active import ActiveRuns
from scheduling.announcer import Announcer
from scheduling.events import Notice, Progress
from scheduling.jobs import JobRecord
from scheduling.outcomes import Outcomes
from scheduling.queue import FairQueue
from scheduling.workers.base import JobRun, Worker

# Runs one generate job on a worker and records its outcome (the JobRunner's run_job).
ServeJob = Callable[[JobRecord, Worker], Awaitable[None]]
# Builds this process's trainer for a train job (None: trainings are not offered).
TrainerFactory = Callable[[JobRecord], Any]


class TrainingRunner:
    """Runs one training job in slices on its worker, serving waiting images between slices."""

    def __init__(
        self,
        *,
        outcomes: Outcomes,
        announcer: Announcer,
        queue: FairQueue,
        active: ActiveRuns,
        config: QueueConfig,
        trainer_factory: TrainerFactory | None,
        stopping: Callable[[], bool],
    ) -> None:
        self.outcomes = outcomes
        self.announcer = announcer
        self.queue = queue
        self.active = active
        self.config = config
        self.trainer_factory = trainer_factory
        self.stopping = stopping

    async def run(self, job: JobRecord, run: JobRun, worker: Worker, *, serve: ServeJob) -> None:
        """Train to the end (or cancel); finishes or raises like a generation.

        ``serve`` runs the /imagine jobs that wait between slices.
        """
        # 1. check the worker can train
        if self.trainer_factory is None:
            await self.outcomes.fail(job, "Training is not available yet.")
            return
        if not worker.supports_training:
            await self.outcomes.fail(job, "This worker cannot run trainings.")
            return
        # 2. build the trainer: on the worker's thread, or on its actor (a remote worker)
        trainer = await worker.trainer(job, self.trainer_factory)
        self.active.training = run  # visible to cancel and /queue between slices
        try:
            await trainer.setup()
            if trainer.step:
                self.announcer.emit(
                    Notice(job, f"Training resumes from its checkpoint at step {trainer.step}.")
                )
            # 3. slices of steps, waiting /imagine jobs served in between
            while True:
                if self.stopping():  # shutdown while /imagine jobs ran between slices
                    raise GenerationCancelled("training interrupted by shutdown")
                status = await trainer.train_steps(self.config.train_slice_steps, run.cancel)
                run.step, run.total = status.step, status.max_steps
                eta = None
                if status.seconds_per_step is not None:
                    eta = (status.max_steps - status.step) * status.seconds_per_step
                self.announcer.emit(
                    Progress(job, status.step, status.max_steps, eta, None, status.loss)
                )
                if run.cancel.is_set():
                    raise GenerationCancelled(f"training stopped at step {status.step}")
                if status.done:
                    break
                await self._serve_between_slices(trainer, run, worker, serve)
            output = await trainer.finish()
        except BaseException:
            await trainer.abort()
            raise
        finally:
            self.active.training = None
        # 4. the LoRA is registered by the store in the same transaction that finishes the job
        await self.outcomes.finish(job, output, train_output_data(output))

    async def _serve_between_slices(
        self, trainer: Any, training: JobRun, worker: Worker, serve: ServeJob
    ) -> None:
        """Run the /imagine jobs that wait, with the adapter under training switched off."""
        queue = self.queue
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
            while not self.stopping() and not queue.paused:
                job = queue.pop_next("generate", same_model)
                if job is None:
                    break
                await serve(job, worker)
        finally:
            self.active.start(worker.name, training)
            await trainer.resume()


def train_output_data(output: Any) -> dict[str, Any]:
    """A JSON-friendly summary of a finished training (paths as strings, no loss curve)."""
    raw = asdict(output) if is_dataclass(output) else dict(output)
    raw.pop("loss_curve", None)
    return {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}
