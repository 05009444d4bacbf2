"""GET /progress, POST /interrupt and /skip: the caller's own jobs only, never anyone else's.

A ``ProgressTracker`` listens to the scheduler's events once per scheduler: the latest preview
and ETA of each running job, and per queue user the "stretch" of jobs since they were last idle
(how many of them are done, whether the caller interrupted or skipped one), which the web UI
reports as ``job_no`` of ``job_count``.
"""

from __future__ import annotations

import base64
import io
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scheduling.events import Cancelled, Failed, Finished, JobEvent, Progress, Started
from scheduling.jobs import JobRecord
from scheduling.scheduler import QueueSnapshot, RunningJob, Scheduler
from webapi.context import CONTEXT, ApiUser, context_of, is_api_user, user_of
from webapi.errors import invalid
from webapi.generate import watch_of

log = logging.getLogger(__name__)

_ENDED = (Finished, Failed, Cancelled)


@dataclass
class _Stretch:
    """One user's jobs since they were last idle."""

    live: set[int] = field(default_factory=set)
    done: int = 0
    interrupted: bool = False
    skipped: bool = False


@dataclass
class _Run:
    """What the events told about one running job."""

    started: float = field(default_factory=time.time)
    preview: Any = None
    eta_s: float | None = None


class ProgressTracker:
    """Keeps, from the scheduler's events, what /progress needs beyond the queue's snapshot."""

    def __init__(self) -> None:
        self._users: dict[int, _Stretch] = {}
        self._runs: dict[int, _Run] = {}

    def __call__(self, event: JobEvent) -> None:
        """Fold one job event in (a scheduler listener, on the event loop)."""
        job = event.job
        if not is_api_user(job.user_id):
            return  # /progress shows API callers their own jobs only: Discord ones are not kept
        stretch = self._users.get(job.user_id)
        if isinstance(event, _ENDED):
            self._runs.pop(job.id, None)
            if stretch is None or job.id not in stretch.live:
                return
            stretch.live.discard(job.id)
            stretch.done += 1
            return
        if stretch is None or not stretch.live:
            # a new stretch: the counts and flags of the previous one are over
            stretch = self._users[job.user_id] = _Stretch()
        stretch.live.add(job.id)
        if isinstance(event, Started):
            self._runs[job.id] = _Run()
        elif isinstance(event, Progress):
            run = self._runs.setdefault(job.id, _Run())
            run.eta_s = event.eta_s
            if event.preview is not None:
                run.preview = event.preview

    def stretch(self, user_id: int) -> _Stretch:
        """The user's current stretch (an empty one when none was seen)."""
        return self._users.get(user_id) or _Stretch()

    def run(self, job_id: int) -> _Run | None:
        """What the events told about a running job, or None."""
        return self._runs.get(job_id)

    def mark(self, user_id: int, *, interrupted: bool = False, skipped: bool = False) -> None:
        """Remember that the user interrupted or skipped (shown in state until a new stretch)."""
        stretch = self._users.setdefault(user_id, _Stretch())
        stretch.interrupted |= interrupted
        stretch.skipped |= skipped


_TRACKERS: weakref.WeakKeyDictionary[Scheduler, ProgressTracker] = weakref.WeakKeyDictionary()


def tracker_for(scheduler: Scheduler) -> ProgressTracker:
    """The one tracker of a scheduler, subscribed on first use (an app built twice shares it)."""
    tracker = _TRACKERS.get(scheduler)
    if tracker is None:
        tracker = _TRACKERS[scheduler] = ProgressTracker()
        scheduler.subscribe(tracker)
    return tracker


def _caller_jobs(
    snapshot: QueueSnapshot, user: ApiUser
) -> tuple[list[RunningJob], list[JobRecord]]:
    running = [r for r in snapshot.running if r.job.user_id == user.user_id]
    return running, snapshot.waiting_for(user.user_id)


def _job_label(job: JobRecord) -> str:
    if job.kind != "generate":
        return job.kind
    return "img2img" if job.request.init_image else "txt2img"


def _png_base64(image: Any) -> str | None:
    try:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    except Exception:  # a preview is best effort; a bad one must not fail /progress
        log.debug("could not encode a preview", exc_info=True)
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false").strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise invalid(name, "must be true or false")


async def progress(request: web.Request) -> web.Response:
    """GET /sdapi/v1/progress: the caller's running or waiting jobs, as the web UI reports."""
    skip_image = _flag(request, "skip_current_image")
    context, user = context_of(request), user_of(request)
    tracker = tracker_for(context.scheduler)
    running, waiting = _caller_jobs(context.scheduler.snapshot(), user)
    stretch = tracker.stretch(user.user_id)
    state: dict[str, Any] = {
        "skipped": stretch.skipped,
        "interrupted": stretch.interrupted,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if not running and not waiting:
        idle = {"progress": 0, "eta_relative": 0, "state": state, "current_image": None}
        return web.json_response({**idle, "textinfo": None})
    done = stretch.done
    count = done + len(running) + len(waiting)
    fraction = sum(r.step / r.total for r in running if r.total > 0)
    first = running[0] if running else None
    focus = first.job if first else waiting[0]
    seen = tracker.run(focus.id) if first else None
    started = seen.started if seen else focus.created_at
    state.update(
        job=_job_label(focus),
        job_count=count,
        job_no=min(done, count - 1),
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        sampling_step=first.step if first else 0,
        sampling_steps=first.total if first else 0,
    )
    value = min(1.0, (done + fraction) / count)
    eta = context.scheduler.eta(waiting[-1].id) if waiting else (seen.eta_s if seen else None)
    if eta is None and first is not None and first.step > 0:
        # no speed measured yet: extrapolate from this job's own steps, once per job left
        per_job = (time.time() - started) * first.total / first.step
        eta = per_job * (1 - first.step / first.total) + per_job * len(waiting)
    if first is not None:
        text = f"Running step {first.step}/{first.total}"
        if waiting:
            text += f"; {len(waiting)} more of yours waiting"
    else:
        place = context.scheduler.position(waiting[0].id)
        text = f"Waiting in the queue: place {place}" if place else "Waiting in the queue"
    image = None
    if seen is not None and seen.preview is not None and not skip_image:
        image = _png_base64(seen.preview)
    answer: dict[str, Any] = {
        "progress": round(value, 4),
        "eta_relative": round(max(eta or 0.0, 0.0), 3),
    }
    answer.update(state=state, current_image=image, textinfo=text)
    return web.json_response(answer)


async def _cancel(request: web.Request, *, waiting_too: bool) -> int:
    """Cancel the caller's running jobs (and waiting ones too); return how many were asked."""
    context, user = context_of(request), user_of(request)
    scheduler = context.scheduler
    asked: set[int] = set()
    # Waiting ones first, so none starts in the gap; again while the cancels' writes let the
    # dispatcher move one of them onto a worker.
    for _ in range(4):
        running, waiting = _caller_jobs(scheduler.snapshot(), user)
        targets = [j.id for j in waiting] if waiting_too else []
        targets += [r.job.id for r in running]
        targets = [job_id for job_id in targets if job_id not in asked]
        if not targets:
            break
        for job_id in targets:
            asked.add(job_id)
            await scheduler.cancel(job_id)
        if not waiting_too:
            break
    return len(asked)


async def _stop(request: web.Request, *, waiting_too: bool) -> None:
    """Cancel the caller's jobs and note it for /progress (interrupted, or skipped)."""
    user = user_of(request)
    if waiting_too:  # first, so that no later job of the caller's calls is queued meanwhile
        watch_of(request.app).interrupt(user)
    count = await _cancel(request, waiting_too=waiting_too)
    what = "interrupted" if waiting_too else "skipped"
    if count:
        tracker_for(context_of(request).scheduler).mark(user.user_id, **{what: True})
    log.info("API user %s %s %d job(s)", user.name, what, count)


async def interrupt(request: web.Request) -> web.Response:
    """POST /sdapi/v1/interrupt: stop all the caller's jobs (running and waiting)."""
    await _stop(request, waiting_too=True)
    return web.json_response({})


async def skip(request: web.Request) -> web.Response:
    """POST /sdapi/v1/skip: stop the caller's running job; their waiting ones go on."""
    await _stop(request, waiting_too=False)
    return web.json_response(None)


def add_routes(app: web.Application) -> None:
    """Register /progress, /interrupt and /skip, and start tracking the scheduler's events."""
    tracker_for(app[CONTEXT].scheduler)
    app.router.add_get("/sdapi/v1/progress", progress)
    app.router.add_post("/sdapi/v1/interrupt", interrupt)
    app.router.add_post("/sdapi/v1/skip", skip)
