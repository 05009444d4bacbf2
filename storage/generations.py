"""Generation history: what was made (prompt, parameters, seeds, files, timings) and stats."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from storage.db import Database, Transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRecord:
    """One finished generation (one job's batch of images, one seed per image)."""

    id: int
    job_id: int | None
    user_id: int
    prompt: str
    negative_prompt: str
    steps: int
    cfg: float
    width: int
    height: int
    sampler: str
    model: str
    lora_name: str | None
    lora_scale: float | None
    seeds: tuple[int, ...]
    image_paths: tuple[str, ...]
    timings: Mapping[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    created_at: float = 0.0
    deleted_at: float | None = None  # its user deleted it: out of /history, files removed


@dataclass(frozen=True)
class GenerationStats:
    """Totals for ``/stats``: finished jobs, images made, average seconds per image."""

    jobs_served: int
    images: int
    avg_seconds_per_image: float | None


_COLUMNS = ", ".join(f.name for f in fields(GenerationRecord))


def _record(row: sqlite3.Row) -> GenerationRecord:
    data = dict(row)
    data["seeds"] = tuple(json.loads(data["seeds"]))
    data["image_paths"] = tuple(json.loads(data["image_paths"]))
    data["timings"] = json.loads(data["timings"])
    return GenerationRecord(**data)


def total_seconds(timings: Mapping[str, float]) -> float | None:
    """The generation's duration: ``timings['total_s']`` if given, else the sum of all parts."""
    if not timings:
        return None
    value = timings["total_s"] if "total_s" in timings else sum(timings.values())
    return float(value)


class GenerationsRepo:
    """Reads and writes rows of the ``generations`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_generation(
        self,
        *,
        job_id: int | None,
        user_id: int,
        prompt: str,
        steps: int,
        cfg: float,
        width: int,
        height: int,
        sampler: str,
        seeds: Sequence[int],
        negative_prompt: str = "",
        model: str = "",
        lora_name: str | None = None,
        lora_scale: float | None = None,
        image_paths: Sequence[str] = (),
        timings: Mapping[str, float] | None = None,
        tx: Transaction | None = None,
    ) -> GenerationRecord:
        """Store one generation; ``image_paths``, when given, must have one path per seed."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("a generation needs at least one seed")
        paths = [str(p) for p in image_paths]
        if paths and len(paths) != len(seeds):
            raise ValueError(f"{len(paths)} image paths for {len(seeds)} seeds; expected one each")
        timing_map = {str(k): float(v) for k, v in (timings or {}).items()}
        if not all(math.isfinite(v) and v >= 0 for v in timing_map.values()):
            raise ValueError(f"timings must be finite non-negative seconds, got {timing_map}")
        async with self._db.within(tx) as tx:
            result = await tx.execute(
                "INSERT INTO generations (job_id, user_id, prompt, negative_prompt, steps, cfg,"
                " width, height, sampler, model, lora_name, lora_scale, seeds, image_paths,"
                " timings, duration_s, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    user_id,
                    prompt,
                    negative_prompt,
                    steps,
                    cfg,
                    width,
                    height,
                    sampler,
                    model,
                    lora_name,
                    lora_scale,
                    json.dumps(seeds),
                    json.dumps(paths),
                    json.dumps(timing_map),
                    total_seconds(timing_map),
                    time.time(),
                ),
            )
            row = await tx.fetchone(
                f"SELECT {_COLUMNS} FROM generations WHERE id = ?", (result.lastrowid,)
            )
        assert row is not None
        return _record(row)

    async def get_generation(self, generation_id: int) -> GenerationRecord | None:
        """The generation with this id, or None."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM generations WHERE id = ?", (generation_id,)
        )
        return None if row is None else _record(row)

    async def last_generation_for_user(self, user_id: int) -> GenerationRecord | None:
        """The user's most recent generation, or None."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM generations WHERE user_id = ? ORDER BY id DESC LIMIT 1",
            (user_id,),
        )
        return None if row is None else _record(row)

    async def recent_for_user(
        self, user_id: int, *, limit: int = 5, offset: int = 0
    ) -> list[GenerationRecord]:
        """The user's generations (not deleted ones), newest first, ``limit`` from ``offset``."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM generations WHERE user_id = ? AND deleted_at IS NULL "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            (user_id, int(limit), int(offset)),
        )
        return [_record(row) for row in rows]

    async def get_generation_by_job(self, job_id: int) -> GenerationRecord | None:
        """The (latest) generation recorded for a job, or None."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM generations WHERE job_id = ? ORDER BY id DESC LIMIT 1",
            (job_id,),
        )
        return None if row is None else _record(row)

    async def mark_deleted(self, job_id: int) -> GenerationRecord | None:
        """Mark the job's generation deleted (the first time only); the record, or None if none."""
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE generations SET deleted_at = ? WHERE job_id = ? AND deleted_at IS NULL",
                (time.time(), job_id),
            )
            row = await tx.fetchone(
                f"SELECT {_COLUMNS} FROM generations WHERE job_id = ? ORDER BY id DESC LIMIT 1",
                (job_id,),
            )
        return None if row is None else _record(row)

    async def stats(self, user_id: int | None = None) -> GenerationStats:
        """Jobs finished ('done'), images generated and mean seconds per image (all or one user).

        Deleted generations still count: they were made and served.
        """
        user_filter, params = ("", ()) if user_id is None else (" AND user_id = ?", (user_id,))
        jobs = await self._db.fetchone(
            "SELECT count(*) FROM jobs WHERE status = 'done'" + user_filter, params
        )
        images = await self._db.fetchone(
            "SELECT coalesce(sum(json_array_length(seeds)), 0) AS images,"
            " sum(duration_s) AS seconds,"
            " sum(CASE WHEN duration_s IS NOT NULL THEN json_array_length(seeds) END) AS timed"
            " FROM generations WHERE 1 = 1" + user_filter,
            params,
        )
        assert jobs is not None and images is not None
        timed = images["timed"] or 0
        average = images["seconds"] / timed if timed else None
        return GenerationStats(int(jobs[0]), int(images["images"]), average)
