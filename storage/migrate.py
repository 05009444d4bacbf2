"""Versioned SQL migrations: discovery, backup before upgrading, and transactional apply.

The schema version is SQLite's ``PRAGMA user_version``. Migration ``NNNN_name.sql`` brings the
database from version NNNN-1 to NNNN; versions are contiguous from 0001. A file holds plain SQL
without BEGIN/COMMIT: each one runs in its own transaction, together with the version bump, so a
failing migration leaves the database exactly as it was. Foreign keys are not enforced while
migrating (so tables can be rebuilt); ``PRAGMA foreign_key_check`` must pass before the commit.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from storage.errors import StorageError, corrupt_database_error, sqlite_error_kind

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One SQL file that upgrades the schema to ``version``."""

    version: int
    path: Path


def discover_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``folder``, sorted; raises StorageError if versions are not 1..N."""
    found = []
    for path in folder.glob("*.sql"):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise StorageError(f"migration file {path} is not named like 0001_description.sql")
        found.append(Migration(int(match.group(1)), path))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise StorageError(f"migrations in {folder} must be numbered 1..N without gaps: {versions}")
    return found


async def _scalar(conn: aiosqlite.Connection, sql: str) -> object:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


async def schema_version(conn: aiosqlite.Connection) -> int:
    """The schema version recorded in the database (0 for a new file)."""
    return int(await _scalar(conn, "PRAGMA user_version") or 0)


async def check_integrity(conn: aiosqlite.Connection, db_path: Path) -> None:
    """Raise a StorageError with restore instructions if ``PRAGMA quick_check`` finds damage."""
    async with conn.execute("PRAGMA quick_check") as cursor:
        rows = [str(r[0]) for r in await cursor.fetchall()]
    if rows != ["ok"]:
        raise corrupt_database_error(db_path, "integrity check: " + "; ".join(rows[:3]))


async def backup_database(conn: aiosqlite.Connection, db_path: Path, version: int) -> Path:
    """Copy the database to ``<name>.bak-v<version>`` (consistent snapshot, replaced atomically)."""
    target = db_path.with_name(f"{db_path.name}.bak-v{version}")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        await conn.execute("VACUUM INTO ?", (str(partial),))
        os.replace(partial, target)
    except (OSError, aiosqlite.Error) as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(
            f"Could not back up {db_path} to {target} before upgrading its schema ({exc}); "
            "the database was not changed. Free disk space or fix permissions and start again."
        ) from exc
    log.info("Backed up database schema v%s to %s", version, target)
    return target


async def _apply(conn: aiosqlite.Connection, migration: Migration, db_path: Path) -> None:
    sql = migration.path.read_text(encoding="utf-8")
    # user_version cannot be bound as a parameter; it is an int from the file name.
    script = f"BEGIN IMMEDIATE;\n{sql}\n;\nPRAGMA user_version = {int(migration.version)};\n"
    try:
        await conn.executescript(script)
        async with conn.execute("PRAGMA foreign_key_check") as cursor:
            violations = await cursor.fetchall()
        if violations:
            raise StorageError(
                f"migration {migration.path.name} leaves foreign key violations: "
                f"{[tuple(v) for v in violations[:3]]}; the database was not changed"
            )
        await conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        if isinstance(exc, aiosqlite.Error) and sqlite_error_kind(exc) == "other":
            raise StorageError(
                f"migration {migration.path.name} of {db_path} failed ({exc}); "
                "the database was not changed"
            ) from exc
        raise
    log.info("Applied migration %s to %s", migration.path.name, db_path)


async def _write_probe(conn: aiosqlite.Connection, version: int) -> None:
    """Fail now, not on the first command, if the file cannot be written (or is locked)."""
    try:
        await conn.execute("BEGIN IMMEDIATE")
        await conn.execute(f"PRAGMA user_version = {int(version)}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise


async def migrate(conn: aiosqlite.Connection, db_path: Path, folder: Path = MIGRATIONS_DIR) -> int:
    """Check the file, back it up if it will change, apply pending migrations; return the version."""
    migrations = discover_migrations(folder)
    latest = migrations[-1].version if migrations else 0
    current = await schema_version(conn)
    if current > latest:
        raise StorageError(
            f"The database {db_path} has schema version {current}, but this version of the bot "
            f"knows schema versions up to {latest}: it was written by a newer bot. Upgrade the "
            "bot, or restore a backup made by this version."
        )
    await check_integrity(conn, db_path)
    pending = [m for m in migrations if m.version > current]
    if not pending:
        await _write_probe(conn, current)
        return current
    has_content = current > 0 or await _scalar(conn, "SELECT count(*) FROM sqlite_master")
    if has_content:
        await backup_database(conn, db_path, current)
    await conn.execute("PRAGMA foreign_keys = OFF")
    for migration in pending:
        await _apply(conn, migration, db_path)
    return latest
