"""Exceptions raised by the storage layer."""

from __future__ import annotations

from pathlib import Path

from scheduling.disk import DiskFull


class StorageError(Exception):
    """A database problem explained in words a person hosting the bot can act on."""


class DiskFullError(StorageError, DiskFull):
    """A disk the bot writes to (outputs, database) is full; the words name it."""


class NotFoundError(StorageError, LookupError):
    """The row a call refers to (job, LoRA, ...) does not exist."""


class AlreadyExistsError(StorageError, ValueError):
    """A row with the same unique key (e.g. a LoRA name) already exists."""


class DatabaseLockedError(StorageError):
    """Another program held the database's write lock for longer than the caller could wait."""


# Primary SQLite result codes (https://sqlite.org/rescode.html) that start-up explains.
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = (
    3,
    5,
    6,
    8,
    10,
    11,
    13,
    14,
    26,
)


def sqlite_error_kind(exc: BaseException) -> str:
    """Classify an sqlite3 error as 'corrupt', 'locked', 'readonly', 'full', 'io' or 'other'."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc).lower()
    if code in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return "corrupt"
    if code in (_BUSY, _LOCKED) or "database is locked" in text:
        return "locked"
    if code in (_READONLY, _PERM, _CANTOPEN) or "readonly" in text or "unable to open" in text:
        return "readonly"
    if code == _FULL or "disk is full" in text:
        return "full"
    if code == _IOERR or "disk i/o error" in text:
        return "io"
    return "other"


def find_backups(db_path: Path) -> list[Path]:
    """Backup copies made before migrations (``<name>.bak-vN``), newest first."""
    found = [p for p in db_path.parent.glob(db_path.name + ".bak-v*") if p.suffix != ".partial"]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def corrupt_database_error(db_path: Path, detail: str) -> StorageError:
    """The refusal to start on a damaged database file, with restore instructions."""
    try:
        backups = find_backups(db_path)
    except OSError:
        backups = []
    steps = f"stop the bot, delete {db_path.name}-wal and {db_path.name}-shm if present, and "
    if backups:
        restore = f"To restore: {steps}copy the backup {backups[0]} over {db_path}."
    else:
        restore = (
            f"No backup ({db_path.name}.bak-v*) was found next to it. To restore: {steps}copy "
            f"your own backup over {db_path}, or try `sqlite3 {db_path} .recover`."
        )
    return StorageError(
        f"The database file {db_path} is damaged ({detail}); the bot will not start on it. "
        f"{restore} Or move the file away to start with an empty database "
        "(profiles, LoRA records and history are then lost)."
    )


def explain_sqlite_error(exc: BaseException, db_path: Path) -> StorageError:
    """Turn an sqlite3 error met while opening ``db_path`` into a StorageError a host can act on."""
    kind = sqlite_error_kind(exc)
    if kind == "corrupt":
        return corrupt_database_error(db_path, str(exc))
    if kind == "locked":
        return StorageError(
            f"The database {db_path} is locked by another program ({exc}). Is another copy of "
            "the bot running, or the file open in a database browser? Close it and start again."
        )
    if kind == "readonly":
        return StorageError(
            f"The database {db_path} cannot be opened for writing ({exc}). Check that the file "
            "and its folder are writable by the user running the bot (SQLite creates "
            f"{db_path.name}-wal and {db_path.name}-shm next to it) and not on a read-only disk."
        )
    if kind == "full":
        return DiskFullError(
            f"The disk holding the database ({db_path}) is full ({exc}); an admin needs to "
            "free space."
        )
    if kind == "io":
        return StorageError(f"Reading or writing {db_path} failed with a disk error ({exc}).")
    return StorageError(f"Cannot use the database {db_path}: {exc}")
