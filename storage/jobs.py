"""Durable jobs (the engine's JobStore): creation, status changes, recovery after a restart."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any, cast, get_args

from engine.requests import GenerationRequest
from scheduling.jobs import (
    DELIVERABLE_STATUSES,
    FINAL_STATUSES,
    JobKind,
    JobRecord,
    JobStatus,
    NewJob,
    TrainSpec,
    Work,
)
from storage.db import Database, Transaction
from storage.errors import NotFoundError

log = logging.getLogger(__name__)

JOB_STATUSES: frozenset[str] = frozenset(get_args(JobStatus))
_COLUMNS = (
    "id, kind, user_id, payload, guild_id, channel_id, reference, priority, status, attempts,"
    " error, created_at, delivered_at"
)
_DELIVERABLE_SQL = ", ".join(f"'{s}'" for s in sorted(DELIVERABLE_STATUSES))


def _to_json(name: str, value: dict[str, Any]) -> str:
    if not isinstance(value, dict):
        raise TypeError(f"job {name} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job {name} cannot be stored as JSON: {exc}") from exc


# The one place a job's work becomes JSON and back. The keys are those of every earlier version,
# so jobs written before an upgrade still load.
_REQUEST, _TRAIN, _TAG = "request", "train", "queue_tag"


def encode_payload(work: Work, tag: float | None) -> dict[str, Any]:
    """The stored JSON form of a job's work and fair-queue tag."""
    payload: dict[str, Any] = (
        {_TRAIN: work.trainer_settings()}
        if isinstance(work, TrainSpec)
        else {_REQUEST: work.to_dict()}
    )
    if tag is not None:
        payload[_TAG] = tag
    return payload


def decode_payload(kind: str, payload: dict[str, Any]) -> tuple[Work, float | None]:
    """The work and fair-queue tag of a stored payload."""
    tag = payload.get(_TAG)
    tag = None if tag is None else float(tag)
    if kind == "train":
        return TrainSpec.from_dict(payload.get(_TRAIN) or {}), tag
    # A row written before requests were checked may lack a prompt: it loads as an empty one.
    request = {"prompt": "", **(payload.get(_REQUEST) or {})}
    if "fast" in request:  # fast mode, as drafts were called before
        fast = request.pop("fast")
        request.setdefault("draft", fast)
    return GenerationRequest.from_dict(request), tag


def _job(row: sqlite3.Row) -> JobRecord:
    work, tag = decode_payload(row["kind"], json.loads(row["payload"]))
    return JobRecord(
        id=int(row["id"]),
        user_id=int(row["user_id"]),
        work=work,
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        reference=json.loads(row["reference"]),
        priority=int(row["priority"]),
        tag=tag,
        status=cast(JobStatus, row["status"]),
        attempts=int(row["attempts"]),
        error=row["error"],
        created_at=float(row["created_at"]),
        delivered=row["delivered_at"] is not None,
    )


class JobsRepo:
    """Reads and updates rows of the ``jobs`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_job(self, new: NewJob) -> JobRecord:
        """Insert a queued job and return it with its new id (committed before returning)."""
        if not isinstance(new.work, (GenerationRequest, TrainSpec)):
            raise TypeError(
                f"job work must be a GenerationRequest or a TrainSpec, got {type(new.work).__name__}"
            )
        kind: JobKind = new.kind
        payload = encode_payload(new.work, new.tag)
        payload_json = _to_json("payload", payload)
        reference_json = _to_json("reference", new.reference)
        async with self._db.transaction() as tx:
            result = await tx.execute(
                "INSERT INTO jobs (kind, user_id, guild_id, channel_id, reference, payload,"
                " priority, created_at, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    new.user_id,
                    new.guild_id,
                    new.channel_id,
                    reference_json,
                    payload_json,
                    int(new.priority),
                    time.time(),
                    (new.work.model or None) if isinstance(new.work, GenerationRequest) else None,
                ),
            )
            row = await tx.fetchone(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (result.lastrowid,)
            )
        assert row is not None
        return _job(row)

    async def set_job_status(
        self,
        job_id: int,
        status: JobStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        tx: Transaction | None = None,
    ) -> None:
        """Record a status change; 'running' counts an attempt, 'done' means delivered.

        'finished', 'failed' and 'cancelled' set finished_at and leave the job undelivered
        (see ``mark_delivered``); 'done' sets finished_at and delivered_at.
        """
        if status not in JOB_STATUSES:
            raise ValueError(f"job status must be one of {sorted(JOB_STATUSES)}, got {status!r}")
        result_json = None if result is None else _to_json("result", result)
        now = time.time()
        running = status == "running"
        final = status in FINAL_STATUSES or status == "finished"
        delivered = status == "done"
        async with self._db.within(tx) as tx:
            outcome = await tx.execute(
                "UPDATE jobs SET status = ?,"
                " attempts = attempts + ?,"
                " started_at = CASE WHEN ? THEN ? ELSE started_at END,"
                " finished_at = CASE WHEN ? THEN coalesce(finished_at, ?) ELSE NULL END,"
                " delivered_at = CASE WHEN ? THEN ? ELSE NULL END,"
                " error = coalesce(?, error),"
                " result = coalesce(?, result)"
                " WHERE id = ?",
                (
                    status,
                    int(running),
                    running,
                    now,
                    final,
                    now,
                    delivered,
                    now,
                    error,
                    result_json,
                    job_id,
                ),
            )
        if outcome.rowcount == 0:
            raise NotFoundError(f"there is no job {job_id}")

    async def mark_delivered(self, job_id: int) -> None:
        """The job's outcome reached the user: 'finished' becomes 'done'; delivered_at is set."""
        outcome = await self._db.execute(
            "UPDATE jobs SET delivered_at = coalesce(delivered_at, ?),"
            " status = CASE WHEN status = 'finished' THEN 'done' ELSE status END"
            " WHERE id = ?",
            (time.time(), job_id),
        )
        if outcome.rowcount == 0:
            raise NotFoundError(f"there is no job {job_id}")

    async def set_job_error(self, job_id: int, error: str) -> None:
        """Replace the error text of a job (e.g. why its result could not be delivered)."""
        await self._db.execute("UPDATE jobs SET error = ? WHERE id = ?", (error, job_id))

    async def undelivered_jobs(self) -> list[JobRecord]:
        """Finished, failed or cancelled jobs whose outcome has not reached the user, oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN ({_DELIVERABLE_SQL})"
            " AND delivered_at IS NULL ORDER BY id"
        )
        return [_job(r) for r in rows]

    async def update_job_reference(self, job_id: int, reference: dict[str, Any]) -> None:
        """Replace the delivery reference of a job (e.g. after the progress message is sent)."""
        outcome = await self._db.execute(
            "UPDATE jobs SET reference = ? WHERE id = ?", (_to_json("reference", reference), job_id)
        )
        if outcome.rowcount == 0:
            raise NotFoundError(f"there is no job {job_id}")

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs still queued or running, oldest first (used to recover after a restart)."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY id"
        )
        return [_job(r) for r in rows]

    async def get_job(self, job_id: int) -> JobRecord | None:
        """The job with this id, or None."""
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    async def get_job_result(self, job_id: int) -> dict[str, Any] | None:
        """The result stored with the job's final status, or None."""
        row = await self._db.fetchone("SELECT result FROM jobs WHERE id = ?", (job_id,))
        if row is None or row["result"] is None:
            return None
        return cast(dict[str, Any], json.loads(row["result"]))

    async def get_job_times(self, job_id: int) -> tuple[float, float | None, float | None] | None:
        """(created_at, started_at, finished_at) of a job, or None if it does not exist."""
        row = await self._db.fetchone(
            "SELECT created_at, started_at, finished_at FROM jobs WHERE id = ?", (job_id,)
        )
        return None if row is None else (row[0], row[1], row[2])

    async def jobs_for_user(
        self, user_id: int, *, limit: int = 20, statuses: set[str] | None = None
    ) -> list[JobRecord]:
        """A user's most recent jobs, newest first, optionally only those with given statuses."""
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE user_id = ?"
        params: list[Any] = [user_id]
        if statuses:
            unknown = set(statuses) - JOB_STATUSES
            if unknown:
                raise ValueError(f"unknown job status(es): {sorted(unknown)}")
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params.extend(sorted(statuses))
        rows = await self._db.fetchall(sql + " ORDER BY id DESC LIMIT ?", (*params, int(limit)))
        return [_job(r) for r in rows]
