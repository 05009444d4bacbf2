"""The ``Storage`` facade: opens the database, holds the repositories, implements JobStore."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from scheduling.jobs import JobRecord, JobStatus, NewJob
from storage.db import Database, Transaction
from storage.embeddings import EmbeddingsRepo
from storage.errors import NotFoundError
from storage.files import FileRoots
from storage.generations import GenerationRecord, GenerationsRepo
from storage.jobs import JobsRepo
from storage.kv import KeyValueRepo
from storage.loras import LorasRepo
from storage.migrate import MIGRATIONS_DIR
from storage.moderation import BlockedWordsRepo
from storage.settings import StorageSettings
from storage.space import DiskSpace
from storage.users import UsersRepo

log = logging.getLogger(__name__)


class Storage:
    """The bot's durable state (one SQLite file plus file roots); satisfies scheduling.jobs.JobStore."""

    def __init__(self, db: Database, files: FileRoots, space: DiskSpace | None = None) -> None:
        self.db = db
        self.files = files
        defaults = StorageSettings.model_fields
        self.space = space or DiskSpace(
            files.outputs_dir,
            db.path,
            min_free_mb=defaults["min_free_mb"].default,
            wait_limit_s=defaults["full_disk_wait_s"].default,
        )
        self.users = UsersRepo(db)
        self.loras = LorasRepo(db)
        self.embeddings = EmbeddingsRepo(db)
        self.jobs = JobsRepo(db)
        self.generations = GenerationsRepo(db)
        self.blocked_words = BlockedWordsRepo(db)
        self.kv = KeyValueRepo(db)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        settings: StorageSettings | None = None,
        migrations_dir: Path = MIGRATIONS_DIR,
    ) -> Storage:
        """Open and migrate the database (``path`` overrides ``settings.db_path``)."""
        settings = settings or StorageSettings()
        db = await Database.open(
            settings.db_path if path is None else path,
            busy_timeout_ms=settings.busy_timeout_ms,
            migrations_dir=migrations_dir,
        )
        files = FileRoots(settings.outputs_dir, settings.lora_dir, settings.embedding_dir)
        space = DiskSpace(
            settings.outputs_dir,
            db.path,
            min_free_mb=settings.min_free_mb,
            wait_limit_s=settings.full_disk_wait_s,
        )
        return cls(db, files, space)

    async def close(self) -> None:
        """Close the database connection."""
        await self.db.close()

    async def __aenter__(self) -> Storage:
        """Use as ``async with await Storage.open(...) as storage:``."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close on leaving the block."""
        await self.close()

    # --- scheduling.jobs.JobStore -------------------------------------------------------------

    async def create_job(self, new: NewJob) -> JobRecord:
        """Insert a queued job and return it with its new id (written before returning)."""
        return await self.jobs.create_job(new)

    async def set_job_status(
        self,
        job_id: int,
        status: JobStatus,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record a status change; 'running' also increments attempts, 'done' marks delivered.

        In the same transaction: a finished generation job gets its generations row (at most one
        per job) and the user's last seed; a finished training registers its LoRA as ready, a
        failed one marks it failed, a cancelled one leaves its newest checkpoint as the LoRA or
        frees the name (see _record_training). So a crash can never leave a job finished
        without its record, or a LoRA trained but not usable.
        """
        job = None
        if status in ("finished", "done", "failed", "cancelled"):
            job = await self.jobs.get_job(job_id)
        record = (
            job is not None
            and job.kind == "generate"
            and status in ("finished", "done")
            and bool(result and result.get("seeds"))
            and await self.generations.get_generation_by_job(job_id) is None
        )
        async with self.db.transaction() as tx:
            if record:
                assert job is not None and result is not None
                await self._record_generation(job, result, tx)
            if job is not None and job.kind == "train":
                outcome = await self._record_training(job, status, result, tx)
                if outcome is not None:
                    result = {**(result or {}), "lora": outcome}
            await self.jobs.set_job_status(job_id, status, error=error, result=result, tx=tx)

    async def _record_training(
        self, job: JobRecord, status: JobStatus, result: dict[str, Any] | None, tx: Transaction
    ) -> str | None:
        """The LoRA's side of a training's end; for a cancel, what became of it.

        A cancel leaves the newest checkpoint as the usable LoRA ('checkpoint'), or without a
        checkpoint forgets the LoRA so its name is free again ('freed').
        """
        name = job.train.name
        if not name:
            return None
        data = result or {}
        if status == "cancelled":
            lora = await self.loras.get_lora(name, tx=tx)
            if lora is None or lora.status != "training":  # not this training's any more
                log.warning("training job %s: its LoRA %r is not in training", job.id, name)
                return None
        try:
            if status in ("finished", "done"):
                await self.loras.set_lora_status(name, "ready", sha256=data.get("sha256"), tx=tx)
            elif status == "failed":
                await self.loras.set_lora_status(name, "failed", tx=tx)
            elif status == "cancelled" and data.get("checkpoint_path"):
                await self.loras.set_lora_status(
                    name,
                    "ready",
                    sha256=data.get("sha256"),
                    path=str(data["checkpoint_path"]),
                    tx=tx,
                )
                return "checkpoint"
            elif status == "cancelled":
                await self.loras.delete_lora(name, tx=tx)
                return "freed"
        except NotFoundError:
            log.warning("training job %s: its LoRA %r is no longer registered", job.id, name)
        return None

    async def _record_generation(
        self, job: JobRecord, result: dict[str, Any], tx: Transaction
    ) -> None:
        request = job.request
        seeds = [int(s) for s in result["seeds"]]
        await self.generations.record_generation(
            job_id=job.id,
            user_id=job.user_id,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or "",
            steps=request.num_inference_steps or 0,
            cfg=request.guidance_scale or 0.0,
            width=request.width or 0,
            height=request.height or 0,
            sampler=request.scheduler or "",
            seeds=seeds,
            model=str(result.get("model", "")),
            lora_name=request.lora_name,
            lora_scale=request.lora_scale if request.lora_name else None,
            image_paths=[str(p) for p in result.get("paths", [])],
            timings={"total_s": float(result.get("seconds", 0.0))},
            tx=tx,
        )
        await self.users.set_last_seed(job.user_id, seeds[0], tx=tx)

    async def delete_generation(self, job_id: int) -> GenerationRecord | None:
        """Delete a job's images for their user: marked deleted (the row stays for the totals),
        then its files removed from the outputs folder. None if the job has no generation."""
        record = await self.generations.mark_deleted(job_id)
        if record is not None:
            removed = await asyncio.to_thread(self.files.remove_images, record.image_paths)
            log.info("generation of job %s deleted (%d file(s) removed)", job_id, removed)
        return record

    async def update_job_reference(self, job_id: int, reference: dict[str, Any]) -> None:
        """Replace the delivery reference of a job (e.g. after the progress message is sent)."""
        await self.jobs.update_job_reference(job_id, reference)

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs still queued or running, oldest first (used to recover after a restart)."""
        return await self.jobs.unfinished_jobs()

    async def mark_delivered(self, job_id: int) -> None:
        """The job's outcome reached its user: 'finished' becomes 'done'."""
        await self.jobs.mark_delivered(job_id)

    async def undelivered_jobs(self) -> list[JobRecord]:
        """Finished, failed or cancelled jobs whose outcome has not reached the user yet."""
        return await self.jobs.undelivered_jobs()

    async def get_job(self, job_id: int) -> JobRecord | None:
        """The job with this id, or None."""
        return await self.jobs.get_job(job_id)

    async def jobs_for_user(self, user_id: int, *, limit: int = 20) -> list[JobRecord]:
        """A user's most recent jobs, newest first."""
        return await self.jobs.jobs_for_user(user_id, limit=limit)
