"""How a job ends: its outcome written to the store, then announced (finished, failed, cancelled)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from scheduling.announcer import Announcer
from scheduling.events import Cancelled, Failed, Finished
from scheduling.jobs import JobRecord, JobStatus, JobStore


class StoreFailure(Exception):
    """Recording an outcome failed (its cause is the store's error)."""


class Outcomes:
    """Records job outcomes in the store and tells the listeners."""

    def __init__(self, store: JobStore, announcer: Announcer, *, deliver: bool) -> None:
        """``deliver=True``: a front end delivers outcomes and marks them delivered itself
        (jobs stay 'finished' until then); otherwise outcomes count as delivered at once."""
        self.store = store
        self.announcer = announcer
        self.deliver = deliver

    async def record(
        self,
        job: JobRecord,
        status: JobStatus,
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
            raise StoreFailure from exc
        job.status = status

    async def finish(self, job: JobRecord, output: Any, data: dict[str, Any]) -> None:
        """Record a finished job and emit Finished."""
        await self.record(job, "finished", result=data)
        self.announcer.emit(Finished(job, output, data))

    async def fail(self, job: JobRecord, message: str, detail: str = "") -> None:
        """Record a failed job and emit Failed."""
        # The user's words go with the result, so a delivery after a restart can show them.
        await self.record(job, "failed", error=detail or message, result={"message": message})
        self.announcer.emit(Failed(job, message, detail))

    async def cancel(self, job: JobRecord, *, was_running: bool, step: int = 0) -> None:
        """Record a cancelled job (with what a cancelled training leaves) and emit Cancelled."""
        result: dict[str, Any] = {"was_running": was_running, "step": step}
        result.update(await asyncio.to_thread(cancel_leftovers, job))
        await self.record(job, "cancelled", result=result)
        self.announcer.emit(Cancelled(job, was_running=was_running, step=step))


def cancel_leftovers(job: JobRecord) -> dict[str, Any]:
    """What a cancelled training leaves, for its recorded result (blocking: file reads).

    Its newest complete checkpoint (``checkpoint_step``, ``checkpoint_path`` of the folder,
    ``sha256`` of its weights), which the store registers as the LoRA; without one, nothing:
    the output folder is removed when only unfinished temporaries are left in it.
    """
    if job.kind != "train" or not job.train.output_dir:
        return {}
    spec = job.train
    from engine.training import files  # imports torch; a training ran in this process anyway

    output_dir = Path(spec.output_dir)
    data: dict[str, Any] = {"max_steps": spec.max_steps}
    found = files.list_checkpoints(output_dir)
    if not found:
        files.remove_temp_dirs(output_dir)
        with contextlib.suppress(OSError):
            output_dir.rmdir()  # only if empty: anything else in it is not ours to remove
        return data
    step, folder = found[-1]
    data.update(
        checkpoint_step=step,
        checkpoint_path=str(folder),
        sha256=files.sha256_file(folder / files.WEIGHT_NAME),
    )
    return data
