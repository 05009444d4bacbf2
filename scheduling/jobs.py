"""Jobs as typed values (what to run, for whom, where to deliver) and the store protocol.

A job carries its work as a typed value: a ``GenerationRequest`` or a ``TrainSpec``. A new job
travels from submit to the store as one ``NewJob``; the store turns it into a ``JobRecord``
with an id. Only the store serializes the work (storage/jobs.py for SQLite).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, Protocol

from engine.requests import GenerationRequest

JobKind = Literal["generate", "train"]
# 'finished': the work is done and saved, the result is not yet delivered; 'done': delivered.
JobStatus = Literal["queued", "running", "finished", "done", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# Statuses whose outcome still has to reach the user while the job is not marked delivered.
DELIVERABLE_STATUSES: frozenset[str] = frozenset({"finished", "failed", "cancelled"})


@dataclass(frozen=True)
class TrainSpec:
    """What a training job trains: the LoRA trainer's settings (the base model is the engine's)."""

    name: str
    dataset_dir: str = ""
    output_dir: str = ""
    trigger_word: str | None = None
    max_steps: int | None = None
    rank: int | None = None
    lr: float | None = None
    resolution: int | None = None
    caption_template: str | None = None
    sample_prompt: str | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    sample_steps: int | None = None

    def trainer_settings(self) -> dict[str, Any]:
        """The TrainConfig keyword arguments this spec sets (unset ones take the recipe's)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        """Rebuild a spec from stored settings, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


Work = GenerationRequest | TrainSpec


def kind_of(work: Work) -> JobKind:
    """The job kind that runs this work."""
    return "train" if isinstance(work, TrainSpec) else "generate"


@dataclass
class NewJob:
    """A job being submitted: its work, its owner and where its outcome goes."""

    user_id: int
    work: Work
    guild_id: int | None = None
    channel_id: int | None = None
    # Where the front end delivers events (e.g. interaction token, message id); opaque here.
    reference: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    tag: float | None = None  # the fair-queue tag, set by the queue before the job is written

    @property
    def kind(self) -> JobKind:
        """'generate' or 'train', from the work."""
        return kind_of(self.work)


@dataclass
class JobRecord:
    """One durable job: its work, for whom, where to deliver the result, and how it went."""

    id: int
    user_id: int
    work: Work
    guild_id: int | None = None
    channel_id: int | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    tag: float | None = None
    status: JobStatus = "queued"
    attempts: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    delivered: bool = False

    @property
    def kind(self) -> JobKind:
        """'generate' or 'train', from the work."""
        return kind_of(self.work)

    @property
    def request(self) -> GenerationRequest:
        """The generation request of a generate job (TypeError for a training)."""
        if not isinstance(self.work, GenerationRequest):
            raise TypeError(f"job {self.id} is a {self.kind} job, not a generation")
        return self.work

    @property
    def train(self) -> TrainSpec:
        """The training spec of a train job (TypeError for a generation)."""
        if not isinstance(self.work, TrainSpec):
            raise TypeError(f"job {self.id} is a {self.kind} job, not a training")
        return self.work

    @classmethod
    def from_new(cls, job_id: int, new: NewJob, **state: Any) -> JobRecord:
        """The record of a new job once the store gave it an id."""
        return cls(
            id=job_id,
            user_id=new.user_id,
            work=new.work,
            guild_id=new.guild_id,
            channel_id=new.channel_id,
            reference=dict(new.reference),
            priority=new.priority,
            tag=new.tag,
            **state,
        )


class JobStore(Protocol):
    """Durable storage for jobs; every method is awaited on the event loop."""

    async def create_job(self, new: NewJob) -> JobRecord:
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
    work = replace(job.work) if isinstance(job.work, GenerationRequest) else job.work
    return replace(job, work=work, reference=dict(job.reference))


class MemoryJobStore:
    """A JobStore kept in memory, for the command line and tests without a database."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self._next = 1

    async def create_job(self, new: NewJob) -> JobRecord:
        """Insert a queued job and return it with its new id."""
        job = _copy(JobRecord.from_new(self._next, new))
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
