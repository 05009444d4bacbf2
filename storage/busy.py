"""Waiting out a database locked by another program (a database browser, a backup tool).

Once the bot runs, SQLite waits at most SLICE_MS inside one statement, so the bot's single
connection is never held for long: between tries it serves other queries (in WAL mode another
program's write lock does not block reads). Who tries again for how long:

- an interaction's own tasks give up at their answer budget (``budget_for_new_tasks``, entered
  where discord.py starts them), so the user is answered in words within Discord's 3 seconds and
  a write given up is never made later (a try is only started while the budget lasts);
- everything else (job status changes, results, delivery marks, and the work an interaction
  hands to other tasks) tries until the lock ends: accepted jobs keep running and delivering.

While an episode lasts only its watcher tries every PAUSE_S; other writers wait for it to find
the database free (``LockEpisodes.free``). ``LockEpisodes`` notes each episode once: a WARNING
when it starts, an INFO with its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SLICE_MS = 50  # SQLite's own wait per try (PRAGMA busy_timeout once the database is open)
PAUSE_S = 0.05  # between the watcher's tries, with the connection free for other queries
# Other writers wait for the watcher to find the lock ended, trying themselves at least this
# often (in case it stopped) and once just before their budget ends: with each writer trying
# every PAUSE_S, a crowd of them held the connection in turn and ran far past their budgets.
WAKE_S = 1.0


@dataclass(eq=False)
class _Budget:
    deadline: float  # on the event loop's clock
    owners: weakref.WeakSet[asyncio.Task[Any]] = field(default_factory=weakref.WeakSet)


_budget: ContextVar[_Budget | None] = ContextVar("storage_budget", default=None)


def deadline() -> float | None:
    """When the current task stops waiting for a locked database (loop time); None: never."""
    budget = _budget.get()
    if budget is None or asyncio.current_task() not in budget.owners:
        return None
    return budget.deadline


def gives_up(until: float | None) -> bool:
    """Whether another try (a pause and a slice) would end past the deadline ``until``."""
    if until is None:
        return False
    return asyncio.get_running_loop().time() + PAUSE_S + SLICE_MS / 1000 > until


@contextlib.contextmanager
def budget_for_new_tasks(seconds: float) -> Iterator[None]:
    """Tasks started in this block wait at most ``seconds`` from now for a locked database.

    Only those tasks: the tasks they start later inherit the context but not the budget, so work
    handed on (events, deliveries, cancelling an unacknowledged job) waits as long as it takes.
    """
    loop = asyncio.get_running_loop()
    budget = _Budget(loop.time() + seconds)
    before = asyncio.all_tasks(loop)
    token = _budget.set(budget)
    try:
        yield
    finally:
        _budget.reset(token)
        budget.owners.update(asyncio.all_tasks(loop) - before)


_episodes: weakref.WeakSet[LockEpisodes] = weakref.WeakSet()


def _quiet_tries(record: logging.LogRecord) -> bool:
    """Drop aiosqlite's DEBUG lines about each try while an episode lasts (two per try, ten
    tries a second: a night's lock would write millions); the episode's WARNING says it all."""
    if record.levelno > logging.DEBUG or not any(e.since is not None for e in _episodes):
        return True
    text = record.getMessage()
    return "BEGIN IMMEDIATE" not in text and "database is locked" not in text


logging.getLogger("aiosqlite").addFilter(_quiet_tries)


class LockEpisodes:
    """When another program held the database locked, and for how long (log, /admin stats)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.since: float | None = None  # wall clock start of the episode under way
        self._started = 0.0
        self.count = 0
        self.total_s = 0.0
        self.last_s = 0.0
        self.last_ended = 0.0
        self.free = asyncio.Event()  # set while no episode is under way
        self.free.set()
        _episodes.add(self)

    def met(self) -> bool:
        """A try found the lock taken; True when that starts an episode (logged once)."""
        if self.since is not None:
            return False
        self.since, self._started = time.time(), time.monotonic()
        self.free.clear()
        log.warning(
            "The database %s is locked by another program (a database browser or a backup "
            "tool?). Commands that must write are refused until it is free; accepted jobs wait "
            "to record their results.",
            self.path,
        )
        return True

    def freed(self) -> None:
        """A write got the lock: the episode under way (if any) ends, logged with its length."""
        if self.since is None:
            return
        self.last_s = time.monotonic() - self._started
        self.count += 1
        self.total_s += self.last_s
        self.since, self.last_ended = None, time.time()
        self.free.set()
        log.info(
            "The database %s is free again after being locked for %.1f s.",
            self.path,
            self.last_s,
        )

    def summary(self) -> str:
        """One line for /admin stats: locked now, the last episode, or never."""
        if self.since is not None:
            return f"**locked by another program** for {time.time() - self.since:.0f} s now"
        if not self.count:
            return "not locked by another program since start"
        return (
            f"last locked {time.time() - self.last_ended:.0f} s ago for {self.last_s:.1f} s; "
            f"{self.count} time(s), {self.total_s:.1f} s in all since start"
        )
