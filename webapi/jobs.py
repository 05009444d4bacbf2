"""API calls as fair-queue jobs: submitted when the caller has room, awaited by job events.

Every job of a call is settled whatever happens: a finished, failed or cancelled one is marked
delivered once its answer is written (or nobody is left to answer), and one that has not ended
when its call goes away (client disconnect, shutdown, an error in a sibling job) is cancelled.
Jobs left from before a restart are ended at the next start (end_orphaned_jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from engine.requests import GenerationRequest
from scheduling.events import Cancelled, Failed, Finished, JobEvent, Started
from scheduling.jobs import JobRecord, NewJob
from scheduling.queue import QueueFullError
from scheduling.scheduler import Scheduler
from storage import Storage
from webapi.context import API_REFERENCE, ApiUser, is_api_job
from webapi.payloads import ApiRequest

log = logging.getLogger(__name__)

RESTART_ERROR = "the client was disconnected by a restart of the server; the job was not run"
DISCONNECTED = "the client disconnected before the job ended"
# Retry-After when no speed has been measured yet (no ETA): a few steps' time on a small card.
RETRY_AFTER_S = 10
# A call waiting for room tries again at least this often (room freed without an event, e.g. a
# reservation given back).
ROOM_POLL_S = 10.0


class ShuttingDown(Exception):
    """The server stops: waiting calls are answered with 503."""


class JobFailed(Exception):
    """A job of the call failed; the message is fit for the client."""


@dataclass
class Ticket:
    """A submitted job and the future its final event (or ShuttingDown) lands in."""

    job: JobRecord
    future: asyncio.Future[JobEvent]

    @property
    def final(self) -> JobEvent | None:
        """The job's final event once it came, else None."""
        fut = self.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        return None


@dataclass
class Outcome:
    """A finished job as stored: its decided request and its result (paths, seeds, infotexts)."""

    job: JobRecord
    result: dict[str, Any]

    @property
    def paths(self) -> list[str]:
        """The saved PNGs, one per image."""
        return list(self.result.get("paths", []))

    @property
    def seeds(self) -> list[int]:
        """The seed of each image."""
        return list(self.result.get("seeds", []))


@dataclass(eq=False)
class Call:
    """One API call's jobs, in the order they were submitted; ``stopped`` by /interrupt."""

    tickets: list[Ticket] = field(default_factory=list)
    stopped: bool = False


class JobWatch:
    """Submits API jobs, hands each its final event, and settles jobs nobody waits for."""

    def __init__(self, scheduler: Scheduler, storage: Storage) -> None:
        self.scheduler = scheduler
        self.storage = storage
        self._waiting: dict[int, asyncio.Future[JobEvent]] = {}
        self._room: dict[int, asyncio.Event] = {}
        self._abandoned: dict[int, str] = {}  # job id -> why its call went away
        self._calls: dict[int, set[Call]] = {}  # user id -> the calls now being answered
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        scheduler.subscribe(self.on_event)

    # ----- events ------------------------------------------------------------------------
    def on_event(self, event: JobEvent) -> None:
        """Scheduler listener: wake callers waiting for room or for their job's outcome."""
        job = event.job
        if isinstance(event, (Started, Finished, Failed, Cancelled)):
            # A waiting place freed: the user's own (per-user cap) or anyone's, a Discord
            # member's too (the global cap), so every caller waiting for room tries again.
            self._wake_all()
        if not is_api_job(job):
            return
        if isinstance(event, (Finished, Failed, Cancelled)):
            waiter = self._waiting.pop(job.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
            else:  # its call is gone: nobody can be answered, so nothing stays undelivered
                reason = self._abandoned.pop(job.id, DISCONNECTED)
                self._spawn(self._delivered(job.id, reason))

    def _wake_all(self) -> None:
        rooms, self._room = self._room, {}
        for room in rooms.values():
            room.set()

    # ----- one call ----------------------------------------------------------------------
    async def submit(
        self, user: ApiUser, request: GenerationRequest, *, wait: bool, call: Call | None = None
    ) -> Ticket | None:
        """Queue one job for ``user``; ``wait``: when the user's cap is reached, wait for room
        (the call's later jobs), else QueueFullError (its first job: 429). None when ``call``
        was stopped by /interrupt before the job could be queued."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobEvent] = loop.create_future()

        async def register(job: JobRecord) -> None:
            self._waiting[job.id] = future

        while True:
            if self._stopping:
                raise ShuttingDown
            if call is not None and call.stopped:
                return None
            room = self._room.setdefault(user.user_id, asyncio.Event())
            new = NewJob(user_id=user.user_id, work=request, reference={API_REFERENCE: user.name})
            try:
                job = await self.scheduler.submit(new, acknowledge=register)
            except QueueFullError:
                if not wait or self.scheduler.stopping:
                    raise
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(room.wait(), ROOM_POLL_S)
                continue
            log.info("api job %s queued for %s", job.id, user.name)
            if call is not None and call.stopped:  # /interrupt came while it was being written
                await self.scheduler.cancel(job.id)
            return Ticket(job, future)

    async def run(self, user: ApiUser, api: ApiRequest, call: Call) -> list[Outcome]:
        """Run a call's n_iter jobs side by side in the fair queue (each its own job), then
        their hires passes; the outcomes in order. QueueFullError when its first job has no
        room; JobFailed; ShuttingDown. The caller settles ``call`` afterwards."""
        calls = self._calls.setdefault(user.user_id, set())
        calls.add(call)  # from the start, so that an /interrupt at any moment stops it
        try:
            first = await self.submit(user, api.job_request(0), wait=False, call=call)
            if first is None:
                return []
            call.tickets.append(first)
            tasks = [
                asyncio.create_task(self._iteration(user, api, k, first if k == 0 else None, call))
                for k in range(api.n_iter)
            ]
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            calls.discard(call)
            if not calls and self._calls.get(user.user_id) is calls:
                self._calls.pop(user.user_id)
        return [outcome for part in results for outcome in part]

    def interrupt(self, user: ApiUser) -> int:
        """Stop the user's calls: none of their later jobs (n_iter, hires passes) is queued;
        their queued and running jobs are the caller's to cancel. How many calls were stopped."""
        calls = self._calls.get(user.user_id, set())
        for call in calls:
            call.stopped = True
        self._wake_all()
        return len(calls)

    async def _iteration(
        self, user: ApiUser, api: ApiRequest, k: int, ticket: Ticket | None, call: Call
    ) -> list[Outcome]:
        if ticket is None:
            ticket = await self.submit(user, api.job_request(k), wait=True, call=call)
            if ticket is None:
                return []
            call.tickets.append(ticket)
        outcome = await self._outcome(ticket)
        if outcome is None or api.hires is None:
            return [] if outcome is None else [outcome]
        decided = outcome.job.request.to_dict()
        finals: list[Outcome] = []
        for path, seed in zip(outcome.paths, outcome.seeds, strict=False):
            request = api.hires_request(decided, path, seed)
            hires = await self.submit(user, request, wait=True, call=call)
            if hires is None:
                break
            call.tickets.append(hires)
            done = await self._outcome(hires)
            if done is not None:
                finals.append(done)
        return finals

    async def _outcome(self, ticket: Ticket) -> Outcome | None:
        """The stored outcome of a finished job; None when cancelled; JobFailed when failed."""
        event = await ticket.future
        if isinstance(event, Failed):
            raise JobFailed(event.message)
        if isinstance(event, Cancelled):
            return None
        job = await self.storage.get_job(ticket.job.id)
        result = await self.storage.jobs.get_job_result(ticket.job.id)
        return Outcome(job or ticket.job, result or {})

    async def settle(self, call: Call, *, keep_images: bool, reason: str = DISCONNECTED) -> None:
        """End every job of a call: ended ones are marked delivered (their PNGs removed unless
        ``keep_images``), the others cancelled. Runs to its end even if the caller is cancelled."""
        task = self._spawn(self._settle(list(call.tickets), keep_images, reason))
        await asyncio.shield(task)

    async def _settle(self, tickets: list[Ticket], keep_images: bool, reason: str) -> None:
        for ticket in tickets:
            job_id = ticket.job.id
            final = ticket.final
            try:
                if final is None:
                    self._waiting.pop(job_id, None)  # its end is settled by on_event
                    self._abandoned[job_id] = reason
                    ticket.future.cancel()
                    await self.scheduler.cancel(job_id)
                    continue
                if isinstance(final, Finished) and not keep_images:
                    await self.storage.delete_generation(job_id)
                await self.storage.mark_delivered(job_id)
            except Exception:
                log.exception("api job %s could not be settled", job_id)

    # ----- the server's life ---------------------------------------------------------------
    def retry_after(self, user: ApiUser) -> int:
        """Seconds until one of the user's waiting jobs should be done (the scheduler's ETA)."""
        waiting = self.scheduler.snapshot().waiting_for(user.user_id)
        etas = [eta for job in waiting if (eta := self.scheduler.eta(job.id)) is not None]
        return max(1, min(600, math.ceil(min(etas)))) if etas else RETRY_AFTER_S

    def stop(self) -> None:
        """Answer every waiting call with ShuttingDown (503); their jobs are then cancelled."""
        self._stopping = True
        for future in list(self._waiting.values()):
            if not future.done():
                future.set_exception(ShuttingDown())
        for room in self._room.values():
            room.set()

    async def wait_settled(self) -> None:
        """Wait for the settling of calls that ended (for shutdown and tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _delivered(self, job_id: int, reason: str) -> None:
        try:
            await self.storage.jobs.set_job_error(job_id, reason)
            await self.storage.mark_delivered(job_id)
        except Exception:
            log.exception("api job %s could not be marked delivered", job_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


async def end_orphaned_jobs(storage: Storage) -> int:
    """Before the scheduler starts: API jobs from before a restart never run for nobody.

    Queued or running ones are cancelled and finished-but-unanswered ones marked delivered,
    each with RESTART_ERROR (their clients lost the connection with the old process).
    """
    ended = 0
    for job in await storage.unfinished_jobs():
        if is_api_job(job):
            result = {"was_running": job.status == "running", "step": 0, "message": RESTART_ERROR}
            await storage.set_job_status(job.id, "cancelled", error=RESTART_ERROR, result=result)
            await storage.mark_delivered(job.id)
            ended += 1
    for job in await storage.undelivered_jobs():
        if is_api_job(job):
            await storage.jobs.set_job_error(job.id, RESTART_ERROR)
            await storage.mark_delivered(job.id)
            ended += 1
    if ended:
        log.info("ended %d API job(s) whose client was disconnected by the restart", ended)
    return ended
