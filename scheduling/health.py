"""The dispatcher's health for /admin stats: the errors it survived and the jobs it requeued."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from scheduling.jobs import JobRecord


@dataclass
class EngineHealth:
    """Errors the dispatcher survived, the last one, and the jobs sent back to the queue."""

    errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    requeued: list[int] = field(default_factory=list)

    def record(self, job: JobRecord, exc: BaseException) -> None:
        """Remember an error the dispatcher survived."""
        self.errors += 1
        self.last_error = f"job {job.id}: {type(exc).__name__}: {exc}"[:300]
        self.last_error_at = time.time()
