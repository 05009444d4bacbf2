"""A finished job whose images the full outputs disk refused: held in memory until saved.

The job keeps its worker: nothing else could be saved either, so its images stay in memory (one
job per worker at most) and are saved again on a backoff until they fit or the guard's
``wait_limit_s`` passes. A restart meanwhile re-renders the job: it is still 'running' in the
store, and its request was decided at submit (same seeds, same images).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from engine.errors import GenerationCancelled
from scheduling.announcer import Announcer
from scheduling.disk import ImagesUnsaved, OutputsStayedFull, Saved, SpaceGuard
from scheduling.events import Notice
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun

log = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 10.0  # worst case from freed space to the images saved (plus one save)


class DiskWait:
    """Holds a finished job whose images the full outputs disk refused until they are saved."""

    def __init__(self, guard: SpaceGuard, announcer: Announcer) -> None:
        self.guard = guard
        self.announcer = announcer
        self.waiting = 0  # jobs holding their images now (for tests and /admin)

    async def saved(self, job: JobRecord, run: JobRun, unsaved: ImagesUnsaved) -> Saved:
        """Retry the save with backoff; raise GenerationCancelled on cancel or stop, and
        OutputsStayedFull in words once ``wait_limit_s`` has passed."""
        start = time.monotonic()
        words = self.guard.outputs_full()
        log.warning(
            "job %s: %s (%s); its images are kept in memory and saved when space returns",
            job.id, words, unsaved.cause,
        )  # fmt: skip
        self.announcer.emit(
            Notice(
                job, f"{words}; your images are made and will be posted once an admin frees space."
            )
        )
        delay = FIRST_RETRY_S
        self.waiting += 1
        try:
            while True:
                left = self.guard.wait_limit_s - (time.monotonic() - start)
                if left <= 0:
                    raise OutputsStayedFull(
                        f"{self.guard.outputs_full()} and stayed full for "
                        f"{_duration(self.guard.wait_limit_s)}, so "
                        "this job's images could not be saved; try again once an admin has "
                        "freed space."
                    )
                if await asyncio.to_thread(run.cancel.wait, min(delay, left)):
                    raise GenerationCancelled("cancelled while waiting for disk space")
                delay = min(delay * 2, MAX_RETRY_S)
                try:
                    done = await asyncio.to_thread(unsaved.retry)
                except ImagesUnsaved as again:
                    unsaved = again
                    log.debug("job %s: the outputs disk is still full", job.id)
                    continue
                log.info(
                    "job %s: images saved after %.1f s waiting for disk space",
                    job.id, time.monotonic() - start,
                )  # fmt: skip
                return done
        finally:
            self.waiting -= 1


def stopped_words(guard: SpaceGuard, job: JobRecord, run: JobRun) -> str:
    """Why a job stopped on a full disk, naming the disk (a training's: its LoRA folder)."""
    if job.kind == "train" and job.train.output_dir:
        folder = Path(job.train.output_dir).parent
        try:
            free = f" ({shutil.disk_usage(folder).free / 2**20:,.0f} MB free)"
        except OSError:
            free = ""
        return (
            f"The disk holding {folder.as_posix()}/ is full{free}, so the training could not "
            f"save its weights (at step {run.step}); try again once an admin has freed space."
        )
    return f"{guard.outputs_full()}, so this job could not finish; try again once space is freed."


def _duration(seconds: float) -> str:
    """'45 s', '20 min' or '3 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
