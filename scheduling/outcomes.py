"""How a job ends: its outcome written to the store, then announced (finished, failed, cancelled)."""

from __future__ import annotations

from typing import Any

from scheduling.announcer import Announcer
from scheduling.events import Failed, Finished
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
