"""Events a job reports while it waits, runs and ends; delivered on the asyncio loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduling.jobs import JobRecord


@dataclass
class JobEvent:
    """Base class of all job events."""

    job: JobRecord


@dataclass
class Queued(JobEvent):
    """The job waits; position 1 runs next. eta_s is None until a speed has been measured."""

    position: int
    eta_s: float | None


@dataclass
class Started(JobEvent):
    """The engine thread took the job."""


@dataclass
class Progress(JobEvent):
    """Step `step` of `total` done; preview is a small PIL image or None."""

    step: int
    total: int
    eta_s: float | None = None
    preview: Any = None
    loss: float | None = None


@dataclass
class Notice(JobEvent):
    """Something the user should know that does not end the job (e.g. an out-of-memory retry)."""

    message: str


@dataclass
class Finished(JobEvent):
    """The job completed; result holds images, seeds, paths and timings (a GenerationResult)."""

    result: Any
    result_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failed(JobEvent):
    """The job failed: message is fit for users, detail is for the log."""

    message: str
    detail: str = ""


@dataclass
class Cancelled(JobEvent):
    """The job was cancelled: removed from the queue, or stopped after `step` while running."""

    was_running: bool
    step: int = 0
