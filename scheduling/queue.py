"""The fair job queue: round-robin across users by fair tags, caps, positions, durable submits.

Each job gets a tag when it is submitted: one more than the last tag among its user's waiting
jobs, or than the tag of the job served last, whichever is larger. Jobs run in (priority, tag,
id) order, which is round-robin across users: a user's tenth request has tag 10 and never holds
back another user's first (tag 1). The tag is stored with the job, so after a restart the
recovered jobs run in exactly their original order.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace

from scheduling.jobs import JobKind, JobRecord, JobStore, NewJob

log = logging.getLogger(__name__)

SortKey = tuple[int, float, int]


class QueueFullError(Exception):
    """submit refused the job; the message says why in plain words."""


@dataclass
class Reservation:
    """A fair tag and a cap slot held for a job that is being written (see FairQueue.reserve)."""

    user_id: int
    tag: float
    active: bool = True


def _key(job: JobRecord) -> SortKey:
    return (-job.priority, job.tag or 0.0, job.id)


class _SortedJobs:
    """Jobs sorted by key in blocks of at most 2 * LOAD, each block with its jobs' weight sum.

    Insert, remove, position and the weight ahead of a job cost O(log n + n / LOAD + LOAD), so a
    queue of 100,000 waiting jobs costs microseconds per operation where one flat list costs a
    memmove of the whole list per insert and a Python loop over everything ahead per ETA.
    """

    LOAD = 256

    def __init__(self) -> None:
        self._keys: list[list[SortKey]] = []
        self._jobs: list[list[JobRecord]] = []
        self._weights: list[list[float]] = []
        self._sums: list[float] = []
        self._last: list[SortKey] = []  # the last (largest) key of each block
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[JobRecord]:
        for block in self._jobs:
            yield from block

    def insert(self, key: SortKey, job: JobRecord, weight: float) -> None:
        """Add a job under its key."""
        if not self._keys:
            self._keys, self._jobs, self._weights = [[key]], [[job]], [[weight]]
            self._sums, self._last = [weight], [key]
            self._size = 1
            return
        b = min(bisect.bisect_left(self._last, key), len(self._last) - 1)
        i = bisect.bisect_left(self._keys[b], key)
        self._keys[b].insert(i, key)
        self._jobs[b].insert(i, job)
        self._weights[b].insert(i, weight)
        self._sums[b] += weight
        self._last[b] = self._keys[b][-1]
        self._size += 1
        if len(self._keys[b]) > 2 * self.LOAD:
            self._split(b)

    def _split(self, b: int) -> None:
        half = self.LOAD
        for parts in (self._keys, self._jobs, self._weights):
            parts.insert(b + 1, parts[b][half:])
            del parts[b][half:]
        self._sums[b : b + 1] = [sum(self._weights[b]), sum(self._weights[b + 1])]
        self._last[b : b + 1] = [self._keys[b][-1], self._keys[b + 1][-1]]

    def locate(self, key: SortKey) -> tuple[int, int]:
        """(block, index in block) of the job with this key; the key must be present."""
        b = bisect.bisect_left(self._last, key)
        return b, bisect.bisect_left(self._keys[b], key)

    def pop(self, b: int, i: int) -> JobRecord:
        """Remove and return the job at (block, index)."""
        del self._keys[b][i]
        job = self._jobs[b].pop(i)
        del self._weights[b][i]
        self._size -= 1
        if self._keys[b]:
            self._sums[b] = sum(self._weights[b])  # re-summed: no drift from += and -=
            self._last[b] = self._keys[b][-1]
        else:
            for parts in (self._keys, self._jobs, self._weights, self._sums, self._last):
                del parts[b]
        return job

    def index(self, b: int, i: int) -> int:
        """0-based place of (block, index) in the whole order."""
        return sum(map(len, self._keys[:b])) + i

    def weight_before(self, b: int, i: int) -> float:
        """The summed weight of the jobs before (block, index)."""
        return sum(self._sums[:b]) + sum(self._weights[b][:i])

    def at(self, index: int) -> tuple[int, int]:
        """(block, index in block) of the job at a 0-based place in the whole order."""
        for b, block in enumerate(self._keys):
            if index < len(block):
                return b, index
            index -= len(block)
        raise IndexError(index)

    def slice(self, start: int, stop: int) -> list[JobRecord]:
        """The jobs at places start..stop-1."""
        return [job for job, _ in self.weighted_slice(start, stop)]

    def weighted_slice(self, start: int, stop: int) -> list[tuple[JobRecord, float]]:
        """(job, weight) at places start..stop-1."""
        out: list[tuple[JobRecord, float]] = []
        stop = min(stop, self._size)
        if start >= stop:
            return out
        b, i = self.at(start)
        while len(out) < stop - start:
            end = i + stop - start - len(out)
            out.extend(zip(self._jobs[b][i:end], self._weights[b][i:end], strict=True))
            b, i = b + 1, 0
        return out

    def key_at(self, b: int, i: int) -> SortKey:
        """The key at (block, index)."""
        return self._keys[b][i]


class FairQueue:
    """Waiting jobs in fair order; operations cost O(log n + sqrt n) at most on the event loop.

    ``weight(job)`` (default 0) is summed over the jobs ahead of a job by ``weight_ahead``, so
    the scheduler's ETA does not walk the queue.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        per_user_cap: int = 3,
        global_cap: int = 100,
        weight: Callable[[JobRecord], float] | None = None,
    ) -> None:
        self.store = store
        self.per_user_cap = per_user_cap
        self.global_cap = global_cap
        self._weight = weight
        self._sorted = _SortedJobs()
        self._by_id: dict[int, JobRecord] = {}
        self._per_user: dict[int, list[float]] = {}  # user -> tags of their waiting jobs
        self._served_tag = 0.0
        self._reserved = 0  # jobs being written: they count against the global cap already
        self._available = asyncio.Event()
        self.paused = False

    def __len__(self) -> int:
        return len(self._sorted)

    def get_job(self, job_id: int) -> JobRecord | None:
        """The waiting job with this id, or None."""
        return self._by_id.get(job_id)

    def next_tag(self, user_id: int) -> float:
        """The fair tag a new job of this user gets."""
        tags = self._per_user.get(user_id)
        return max(self._served_tag, max(tags) if tags else 0.0) + 1.0

    def check_caps(self, user_id: int) -> None:
        """Raise QueueFullError when the user or the whole queue has no room for another job."""
        mine = len(self._per_user.get(user_id, ()))
        if mine >= self.per_user_cap:
            raise QueueFullError(
                f"You already have {mine} jobs waiting (the limit is {self.per_user_cap}); "
                "wait for one to start or cancel one."
            )
        if len(self._sorted) + self._reserved >= self.global_cap:
            raise QueueFullError(
                f"The queue is full ({self.global_cap} jobs waiting); try again in a few minutes."
            )

    async def submit(
        self,
        new: NewJob,
        *,
        check_caps: bool = True,
        before_place: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> JobRecord:
        """Check the caps, write the job to the store, then place it in fair order.

        ``before_place(job)`` runs after the write and before the job can start (the bot
        acknowledges the interaction there, so no acknowledged command exists without a
        record); if it raises, the job is not placed and the error propagates.
        """
        reservation = self.reserve(new.user_id, check_caps=check_caps)
        try:
            job = await self.store.create_job(replace(new, tag=reservation.tag))
            if before_place is not None:
                await before_place(job)
        except BaseException:
            self.release(reservation)
            raise
        self.place(job, reservation)
        return job

    def reserve(self, user_id: int, *, check_caps: bool = True) -> Reservation:
        """Hold a fair tag and a cap slot (per user and global) before awaiting the store.

        Concurrent submits then get distinct tags and can never overshoot a cap.
        """
        if check_caps:
            self.check_caps(user_id)
        tag = self.next_tag(user_id)
        self._per_user.setdefault(user_id, []).append(tag)
        self._reserved += 1
        return Reservation(user_id, tag)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose job was not placed."""
        if not reservation.active:
            return
        reservation.active = False
        self._reserved -= 1
        tags = self._per_user.get(reservation.user_id, [])
        if reservation.tag in tags:
            tags.remove(reservation.tag)
        if not tags:
            self._per_user.pop(reservation.user_id, None)

    def place(self, job: JobRecord, reservation: Reservation) -> None:
        """Put a written job in fair order under its reservation."""
        if not reservation.active:
            raise RuntimeError("this reservation was released")
        reservation.active = False
        self._reserved -= 1
        self._insert(job)

    def push(self, job: JobRecord) -> None:
        """Place a stored job in fair order (a job without a tag, e.g. recovered, gets one)."""
        if job.tag is None:
            job.tag = self.next_tag(job.user_id)
        self._per_user.setdefault(job.user_id, []).append(_key(job)[1])
        self._insert(job)

    def _insert(self, job: JobRecord) -> None:
        weight = 0.0 if self._weight is None else self._weight(job)
        self._sorted.insert(_key(job), job, weight)
        self._by_id[job.id] = job
        if not self.paused:
            self._available.set()

    def restore_served_tag(self, tag: float) -> None:
        """After a restart: the tag of the job served last, so new jobs queue behind recovered ones."""
        self._served_tag = max(self._served_tag, tag)

    def order(self) -> list[JobRecord]:
        """Every waiting job in the order it will be served."""
        return list(self._sorted)

    def slice(self, start: int, stop: int) -> list[JobRecord]:
        """The waiting jobs at 0-based places start..stop-1 of the serving order."""
        return self._sorted.slice(start, stop)

    def weighted_slice(self, start: int, stop: int) -> list[tuple[JobRecord, float]]:
        """(job, weight) for the waiting jobs at 0-based places start..stop-1."""
        return self._sorted.weighted_slice(start, stop)

    def position(self, job_id: int) -> int | None:
        """1-based place of a waiting job in the serving order, or None if it is not waiting."""
        job = self._by_id.get(job_id)
        if job is None:
            return None
        return self._sorted.index(*self._sorted.locate(_key(job))) + 1

    def jobs_ahead(self, job_id: int) -> list[JobRecord]:
        """The waiting jobs that run before this one."""
        position = self.position(job_id)
        return [] if position is None else self._sorted.slice(0, position - 1)

    def weight_ahead(self, job_id: int) -> float:
        """The summed weight of the waiting jobs that run before this one (0 if not waiting)."""
        job = self._by_id.get(job_id)
        if job is None:
            return 0.0
        return self._sorted.weight_before(*self._sorted.locate(_key(job)))

    def remove(self, job_id: int) -> JobRecord | None:
        """Take a waiting job out of the queue (for cancel); None if it was not waiting."""
        job = self._by_id.get(job_id)
        if job is None:
            return None
        self._take(_key(job))
        return job

    def _take(self, key: SortKey, served: bool = False) -> JobRecord:
        job = self._sorted.pop(*self._sorted.locate(key))
        if served:
            self._served_tag = max(self._served_tag, key[1])
        del self._by_id[job.id]
        tags = self._per_user[job.user_id]
        tags.remove(key[1])
        if not tags:
            del self._per_user[job.user_id]
        if not self._sorted:
            self._available.clear()
        return job

    def pop_next(
        self, kind: JobKind | None = None, accept: Callable[[JobRecord], bool] | None = None
    ) -> JobRecord | None:
        """Take the next job in fair order (optionally only of one kind, or accepted), or None."""
        for job in self._sorted:
            if (kind is None or job.kind == kind) and (accept is None or accept(job)):
                return self._take(_key(job), served=True)
        return None

    def head(self, count: int) -> list[JobRecord]:
        """The first `count` waiting jobs in serving order."""
        return self._sorted.slice(0, count)

    def take(self, job_id: int) -> JobRecord | None:
        """Take this waiting job to run it now (it counts as served, like pop_next)."""
        job = self._by_id.get(job_id)
        if job is None:
            return None
        return self._take(_key(job), served=True)

    async def wait_available(self) -> None:
        """Wait until a job waits and the queue is not paused."""
        while self.paused or not self._sorted:
            self._available.clear()
            await self._available.wait()

    def pause(self) -> None:
        """Stop handing out jobs (submits are still accepted)."""
        self.paused = True

    def resume(self) -> None:
        """Hand out jobs again."""
        self.paused = False
        if self._sorted:
            self._available.set()

    def has_waiting(
        self, kind: JobKind | None = None, accept: Callable[[JobRecord], bool] | None = None
    ) -> bool:
        """Whether a job (of this kind, and accepted) waits."""
        return any(
            (kind is None or job.kind == kind) and (accept is None or accept(job))
            for job in self._sorted
        )
