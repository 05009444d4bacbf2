"""The SQLite connection: safe opening (WAL, foreign keys, busy timeout), migration, locked access."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiosqlite

from storage import busy
from storage.errors import (
    DatabaseLockedError,
    StorageError,
    corrupt_database_error,
    explain_sqlite_error,
    sqlite_error_kind,
)
from storage.migrate import MIGRATIONS_DIR, migrate

log = logging.getLogger(__name__)

Params = Sequence[Any] | Mapping[str, Any]
T = TypeVar("T")
_SQLITE_HEADER = b"SQLite format 3\x00"


class ExecResult(NamedTuple):
    """What a write statement did: the last inserted row id and the number of rows changed."""

    lastrowid: int | None
    rowcount: int


class Transaction:
    """Statements run inside one open transaction (obtained from ``Database.transaction``)."""

    def __init__(self, conn: aiosqlite.Connection, db_path: Path) -> None:
        self._conn = conn
        self._path = db_path

    async def execute(self, sql: str, params: Params = ()) -> ExecResult:
        """Run one statement with bound parameters."""
        try:
            async with self._conn.execute(sql, params) as cursor:
                return ExecResult(cursor.lastrowid, cursor.rowcount)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise _runtime_error(exc, self._path) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Run a query and return its first row, or None."""
        try:
            async with self._conn.execute(sql, params) as cursor:
                return await cursor.fetchone()
        except sqlite3.Error as exc:
            raise _runtime_error(exc, self._path) from exc

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run a query and return all its rows."""
        try:
            async with self._conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise _runtime_error(exc, self._path) from exc


def _runtime_error(exc: sqlite3.Error, db_path: Path) -> StorageError:
    kind = sqlite_error_kind(exc)
    if kind == "other":
        return StorageError(f"database query failed: {exc}")
    if kind == "locked":  # retried by Database while the caller may wait (storage/busy.py)
        return DatabaseLockedError(f"The database {db_path} is locked by another program ({exc}).")
    return explain_sqlite_error(exc, db_path)


class Database:
    """One aiosqlite connection; a lock keeps transactions from interleaving across coroutines.

    While another program holds SQLite's lock, statements are tried again with the connection
    free in between, for as long as the calling task may wait (storage/busy.py).
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path, schema_version: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._tx = Transaction(conn, path)
        self.path = path
        self.schema_version = schema_version
        self.locks = busy.LockEpisodes(path)
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        migrations_dir: Path = MIGRATIONS_DIR,
    ) -> Database:
        """Open (creating if needed) and migrate the database; raise StorageError if unusable."""
        db_path = Path(path)
        _check_location(db_path)
        try:
            conn = await aiosqlite.connect(
                db_path, timeout=busy_timeout_ms / 1000, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise explain_sqlite_error(exc, db_path) from exc
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                log.warning("Database %s is not in WAL mode (journal_mode=%s)", db_path, row)
            version = await migrate(conn, db_path, migrations_dir)
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA synchronous = NORMAL")
            # Start-up waited busy_timeout_ms; from now on SQLite waits one short slice per try
            # and the tries are Database's, so a lock never holds the one connection for long.
            await conn.execute(f"PRAGMA busy_timeout = {busy.SLICE_MS}")
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise explain_sqlite_error(exc, db_path) from exc
            raise
        log.info("Opened database %s (schema v%s)", db_path, version)
        return cls(conn, db_path, version)

    async def close(self) -> None:
        """Close the connection (waits for a running transaction to finish)."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        async with self._lock:
            await self._conn.close()

    async def execute(self, sql: str, params: Params = ()) -> ExecResult:
        """Run one write statement in its own transaction."""
        return await self._retrying(lambda: self._tx.execute(sql, params), write=True)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Run a query and return its first row, or None."""
        return await self._retrying(lambda: self._tx.fetchone(sql, params))

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run a query and return all its rows."""
        return await self._retrying(lambda: self._tx.fetchall(sql, params))

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, write: bool = False) -> T:
        """Run ``call`` holding the connection; while locked, again after a pause without it."""
        until = busy.deadline()
        if write:
            await self._await_watcher(until)
        while True:
            await self._hold(until)
            try:
                result = await call()
            except DatabaseLockedError as exc:
                error = exc
            else:
                if write:  # a read gets through another program's lock: no sign it ended
                    self.locks.freed()
                return result
            finally:
                self._lock.release()
            await self._wait_out(error, until)

    async def _hold(self, until: float | None) -> None:
        """Take the connection; while another program holds the lock, a caller with a budget
        waits for it only until the budget ends (the others' tries hold it in turn)."""
        if until is None or self.locks.since is None or not self._lock.locked():
            await self._lock.acquire()
            return
        left = until - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._lock.acquire(), max(0.0, left))
        except asyncio.TimeoutError:  # not the builtin one before Python 3.11
            raise DatabaseLockedError(
                f"The database {self.path} is busy; its turn did not come in time."
            ) from None

    async def _wait_out(self, error: DatabaseLockedError, until: float | None) -> None:
        """Note the lock, then wait before the next try, or give up past the caller's budget.

        Only the watcher tries every PAUSE_S; the others wait for it to find the database free.
        """
        if self.locks.met():
            self._watcher = asyncio.create_task(self._watch(), name="database-lock-watch")
        if busy.gives_up(until):
            raise error
        if not await self._await_watcher(until):
            await asyncio.sleep(busy.PAUSE_S)

    async def _await_watcher(self, until: float | None) -> bool:
        """While another task watches a lock, wait for it to end (False: nobody else watches).

        Returns after at most WAKE_S, or in time for one last try before the budget ends.
        """
        watcher = self._watcher
        if self.locks.since is None or watcher is None or watcher.done():
            return False
        if asyncio.current_task() is watcher:
            return False
        wait = busy.WAKE_S
        if until is not None:
            wait = min(wait, until - asyncio.get_running_loop().time() - busy.SLICE_MS / 1000)
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.locks.free.wait(), wait)
        return True

    async def _watch(self) -> None:
        """Try an empty write until the lock ends, so the episode ends when it does (logged)."""
        try:
            async with self.transaction():
                pass
        except Exception as exc:  # closed meanwhile: the episode stays open in the stats
            log.info("stopped watching the database lock: %r", exc)

    @asynccontextmanager
    async def within(self, tx: Transaction | None) -> AsyncIterator[Transaction]:
        """Join the caller's open transaction, or run in a new one when ``tx`` is None."""
        if tx is not None:
            yield tx
            return
        async with self.transaction() as new:
            yield new

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Run several statements atomically: commit on success, roll back on any exception."""
        await self._begin()
        try:
            try:
                yield self._tx
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            try:
                await self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    await self._conn.execute("ROLLBACK")
                raise _runtime_error(exc, self.path) from exc
        finally:
            self._lock.release()

    async def _begin(self) -> None:
        """Hold the connection and SQLite's write lock (BEGIN IMMEDIATE), retrying while locked.

        Nothing of the transaction runs before BEGIN succeeds, so a caller that gives up at its
        budget has written nothing, and nothing it asked for is written later.
        """
        until = busy.deadline()
        await self._await_watcher(until)
        while True:
            await self._hold(until)
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._lock.release()
                error = _runtime_error(exc, self.path)
                if not isinstance(error, DatabaseLockedError):
                    raise error from exc
            except BaseException:  # cancelled (a wait_for around a patient write), or closed
                # aiosqlite's thread may still run the BEGIN: a ROLLBACK queued behind it undoes
                # it, so the connection is never left inside a transaction nobody owns.
                with contextlib.suppress(Exception):
                    await self._conn.execute("ROLLBACK")
                self._lock.release()
                raise
            else:
                self.locks.freed()
                return
            await self._wait_out(error, until)


def _check_location(db_path: Path) -> None:
    """Explain path problems (folder, permissions, not a SQLite file) before SQLite sees them."""
    if db_path.is_dir():
        raise StorageError(f"The database path {db_path} is a folder; it must name a file.")
    folder = db_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"Cannot create the folder {folder} for the database ({exc.strerror or exc}); "
            "check the path (is a part of it a file?) and permissions."
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"The folder {folder} is not writable; the bot needs to write {db_path.name} and its "
            "-wal/-shm files there. Fix its permissions or choose another STORAGE_DB_PATH."
        )
    if not db_path.exists():
        return
    if not os.access(db_path, os.R_OK | os.W_OK):
        raise StorageError(
            f"The database file {db_path} is read-only; make it writable by the user running the bot."
        )
    try:
        with db_path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StorageError(f"Cannot read the database file {db_path} ({exc}).") from exc
    if header and header != _SQLITE_HEADER:
        raise corrupt_database_error(db_path, "not a SQLite database file")
