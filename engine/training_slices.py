"""Training jobs on the engine thread: slices of steps, with /imagine jobs served in between."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import GenerationCancelled
from engine.events import Progress
from engine.jobs import JobRecord

if TYPE_CHECKING:
    from engine.executor import _Running


class TrainingSlices:
    """The training part of EngineExecutor (mixed in; uses its queue, thread and events)."""

    async def _run_training(self, job: JobRecord, run: _Running) -> None:
        if self.trainer_factory is None:
            await self._fail(job, "Training is not available yet.")
            return
        trainer = await self._in_thread(self.trainer_factory, job)
        self.training = run  # stays visible to cancel and /queue while images run in between
        try:
            await self._in_thread(trainer.setup)
            while True:
                if self._stopping:  # shutdown while /imagine jobs ran between slices
                    raise GenerationCancelled("training interrupted by shutdown")
                status = await self._in_thread(
                    trainer.train_steps, self.config.train_slice_steps, run.cancel
                )
                run.step, run.total = status.step, status.max_steps
                eta = None
                if status.seconds_per_step is not None:
                    eta = (status.max_steps - status.step) * status.seconds_per_step
                self._emit(Progress(job, status.step, status.max_steps, eta, None, status.loss))
                if run.cancel.is_set():
                    raise GenerationCancelled(f"training stopped at step {status.step}")
                if status.done:
                    break
                await self._serve_between_slices(trainer)
            output = await self._in_thread(trainer.finish)
        except BaseException:
            await self._in_thread(trainer.abort)
            raise
        finally:
            self.training = None
        # The LoRA is registered by the store in the same transaction that finishes the job.
        await self._finish(job, output, _train_output_data(output))

    async def _serve_between_slices(self, trainer: Any) -> None:
        """Run the /imagine jobs that wait, with the adapter under training switched off."""
        if not self.queue.has_waiting("generate") or self.queue.paused:
            return
        training = self.running
        await self._in_thread(trainer.suspend)
        try:
            while not self._stopping and not self.queue.paused:
                job = self.queue.pop_next("generate")
                if job is None:
                    break
                await self._run_job(job)
        finally:
            self.running = training
            await self._in_thread(trainer.resume)


def _train_output_data(output: Any) -> dict[str, Any]:
    """A JSON-friendly summary of a finished training (paths as strings, no loss curve)."""
    from dataclasses import asdict, is_dataclass

    raw = asdict(output) if is_dataclass(output) else dict(output)
    raw.pop("loss_curve", None)
    return {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}
