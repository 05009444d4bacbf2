"""Job records and the store protocol the queue persists through (implemented by storage/)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

JobKind = Literal["generate", "train"]
# 'finished': the work is done and saved, the result is not yet delivered; 'done': delivered.
JobStatus = Literal["queued", "running", "finished", "done", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# Statuses whose outcome still has to reach the user while the job is not marked delivered.
DELIVERABLE_STATUSES: frozenset[str] = frozenset({"finished", "failed", "cancelled"})


@dataclass
class JobRecord:
    """One durable job: what to run, for whom, and where to deliver the result."""

    id: int
    kind: JobKind
    user_id: int
    payload: dict[str, Any]
    guild_id: int | None = None
    channel_id: int | None = None
    # Where the front end should deliver events (e.g. interaction token, message id); opaque here.
    reference: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    status: JobStatus = "queued"
    attempts: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    delivered: bool = False


class JobStore(Protocol):
    """Durable storage for jobs; every method is awaited on the event loop."""

    async def create_job(
        self,
        *,
        kind: JobKind,
        user_id: int,
        payload: dict[str, Any],
        guild_id: int | None = None,
        channel_id: int | None = None,
        reference: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> JobRecord:
        """Insert a queued job and return it with its new id (written before returning)."""
        ...

    async def set_job_status(
        self,
        job_id: int,
        status: JobStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record a status change; 'running' also increments attempts, 'done' marks delivered."""
        ...

    async def mark_delivered(self, job_id: int) -> None:
        """The job's outcome reached its user: 'finished' becomes 'done'; never delivered again."""
        ...

    async def update_job_reference(self, job_id: int, reference: dict[str, Any]) -> None:
        """Replace the delivery reference of a job (e.g. after the progress message is sent)."""
        ...

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs still queued or running, oldest first (used to recover after a restart)."""
        ...

    async def undelivered_jobs(self) -> list[JobRecord]:
        """Finished, failed or cancelled jobs whose outcome has not reached the user yet."""
        ...


def _copy(job: JobRecord) -> JobRecord:
    # Callers get their own record, as from a database row: the scheduler's `attempts += 1`
    # mirrors the store's increment instead of adding to it on a shared object.
    return replace(job, payload=dict(job.payload), reference=dict(job.reference))


class MemoryJobStore:
    """A JobStore kept in memory, for the command line and tests without a database."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self._next = 1

    async def create_job(
        self,
        *,
        kind: JobKind,
        user_id: int,
        payload: dict[str, Any],
        guild_id: int | None = None,
        channel_id: int | None = None,
        reference: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> JobRecord:
        """Insert a queued job and return it with its new id."""
        job = JobRecord(
            id=self._next,
            kind=kind,
            user_id=user_id,
            payload=dict(payload),
            guild_id=guild_id,
            channel_id=channel_id,
            reference=dict(reference or {}),
            priority=priority,
        )
        self._next += 1
        self.jobs[job.id] = job
        return _copy(job)

    async def set_job_status(
        self,
        job_id: int,
        status: JobStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record a status change; 'running' also increments attempts, 'done' marks delivered."""
        job = self.jobs[job_id]
        job.status = status
        if status == "running":
            job.attempts += 1
        if status == "done":
            job.delivered = True
        if error is not None:
            job.error = error
        if result is not None:
            self.results[job_id] = result

    async def update_job_reference(self, job_id: int, reference: dict[str, Any]) -> None:
        """Replace the delivery reference of a job."""
        self.jobs[job_id].reference = dict(reference)

    async def mark_delivered(self, job_id: int) -> None:
        """The job's outcome reached its user."""
        job = self.jobs[job_id]
        job.delivered = True
        if job.status == "finished":
            job.status = "done"

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs still queued or running, oldest first."""
        return [
            _copy(j)
            for j in sorted(self.jobs.values(), key=lambda j: j.id)
            if j.status in ("queued", "running")
        ]

    async def undelivered_jobs(self) -> list[JobRecord]:
        """Finished, failed or cancelled jobs not yet delivered, oldest first."""
        return [
            _copy(j)
            for j in sorted(self.jobs.values(), key=lambda j: j.id)
            if j.status in DELIVERABLE_STATUSES and not j.delivered
        ]
