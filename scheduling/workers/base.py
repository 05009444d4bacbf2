"""The worker interface the scheduler talks to, and the state of one running job."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.requests import GenerationResult
from scheduling.jobs import JobRecord


class WorkerLost(Exception):
    """The worker died under a job (process killed, machine gone); the job did not finish."""


@dataclass
class JobRun:
    """A job on a worker now: the cancel flag and the last step reported."""

    job: JobRecord
    cancel: threading.Event = field(default_factory=threading.Event)
    step: int = 0
    total: int = 0
    worker: str = ""


@dataclass
class WorkerInfo:
    """What /admin workers shows about one worker."""

    name: str
    node: str
    device: str
    preset: str
    state: str
    current_job: int | None
    jobs_done: int
    seconds_per_step: float | None


class ProgressSink(Protocol):
    """How a worker reports a running job (callable from any thread)."""

    def progress(self, run: JobRun, step: int, total: int, preview: Any) -> None:
        """Step `step` of `total` is done; preview is a small PIL image or None."""

    def notice(self, run: JobRun, message: str) -> None:
        """Something the user should know (e.g. an out-of-memory retry)."""


class Worker(Protocol):
    """One device serving jobs; the scheduler gives it one job at a time."""

    name: str
    supports_training: bool  # runs train jobs (through trainer())
    shares_process: bool  # runs in the bot's process: call() runs code beside its pipeline
    held_loras: set[str]
    jobs_done: int

    @property
    def alive(self) -> bool:
        """Whether the worker can take a job (False while it restarts)."""

    async def start(self) -> None:
        """Get ready (load, connect); called once by the scheduler's start()."""

    async def generate(
        self, run: JobRun, sink: ProgressSink, image_path: Any
    ) -> tuple[GenerationResult, dict[str, Any]]:
        """Make the images of a generate job; raise WorkerLost if the worker died under it."""

    async def wait_alive(self) -> None:
        """Return once the worker can take jobs again (after a restart)."""

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) beside the pipeline, between jobs (only where shares_process)."""

    async def trainer(self, job: JobRecord, factory: Any) -> Any:
        """A trainer for a train job on this worker (setup, train_steps, suspend, resume, ...)."""

    def info(self, current: JobRun | None) -> WorkerInfo:
        """A description for /admin workers."""

    async def close(self) -> None:
        """Release the device and threads."""
