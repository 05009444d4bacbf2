"""The SQLite connection: safe opening (WAL, foreign keys, busy timeout), migration, locked access."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from storage.errors import (
    StorageError,
    corrupt_database_error,
    explain_sqlite_error,
    sqlite_error_kind,
)
from storage.migrate import MIGRATIONS_DIR, migrate

log = logging.getLogger(__name__)

Params = Sequence[Any] | Mapping[str, Any]
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
    if sqlite_error_kind(exc) == "other":
        return StorageError(f"database query failed: {exc}")
    return explain_sqlite_error(exc, db_path)


class Database:
    """One aiosqlite connection; a lock keeps transactions from interleaving across coroutines."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, schema_version: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._tx = Transaction(conn, path)
        self.path = path
        self.schema_version = schema_version

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
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise explain_sqlite_error(exc, db_path) from exc
            raise
        log.info("Opened database %s (schema v%s)", db_path, version)
        return cls(conn, db_path, version)

    async def close(self) -> None:
        """Close the connection (waits for a running transaction to finish)."""
        async with self._lock:
            await self._conn.close()

    async def execute(self, sql: str, params: Params = ()) -> ExecResult:
        """Run one write statement in its own transaction."""
        async with self._lock:
            return await self._tx.execute(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Run a query and return its first row, or None."""
        async with self._lock:
            return await self._tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run a query and return all its rows."""
        async with self._lock:
            return await self._tx.fetchall(sql, params)

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
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _runtime_error(exc, self.path) from exc
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
