"""Storage start-up: schema creation, migrations, backups, and refusals (newer, corrupt, locked, read-only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.requests import GenerationRequest
from scheduling.jobs import NewJob
from storage import Database, Storage, StorageError, StorageSettings
from storage.busy import SLICE_MS
from storage.errors import explain_sqlite_error, sqlite_error_kind
from storage.migrate import MIGRATIONS_DIR, discover_migrations

LATEST = discover_migrations()[-1].version
TABLES = {"users", "loras", "jobs", "generations", "blocked_words", "settings"}


def _settings(tmp_path: Path, busy_timeout_ms: int = 2000) -> StorageSettings:
    return StorageSettings(
        _env_file=None,
        db_path=tmp_path / "bot.sqlite3",
        outputs_dir=tmp_path / "outputs",
        lora_dir=tmp_path / "lora",
        busy_timeout_ms=busy_timeout_ms,
    )


def _user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrations(tmp_path: Path, extra: dict[str, str]) -> Path:
    """A migrations folder holding the real ones plus ``extra`` (file name -> SQL)."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    for name, sql in extra.items():
        (folder / name).write_text(sql, encoding="utf-8")
    return folder


async def test_new_database_gets_schema_wal_and_foreign_keys(tmp_path: Path) -> None:
    db_path = tmp_path / "sub" / "bot.sqlite3"  # the folder is created too
    db = await Database.open(db_path, busy_timeout_ms=1234)
    try:
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert {r["name"] for r in rows} >= TABLES
        assert db.schema_version == LATEST
        assert (await db.fetchone("PRAGMA user_version"))[0] == LATEST
        assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1
        # 1234 ms was start-up's wait; once open, SQLite waits one slice and Database retries.
        assert (await db.fetchone("PRAGMA busy_timeout"))[0] == SLICE_MS
    finally:
        await db.close()
    assert not list(tmp_path.glob("sub/*.bak-v*")), "a new database needs no backup"


async def test_check_constraints_reject_bad_enum_values(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await db.execute(
                "INSERT INTO jobs (kind, user_id, payload, created_at) VALUES ('bake', 1, '{}', 0)"
            )
        with pytest.raises(sqlite3.IntegrityError):
            await db.execute(
                "INSERT INTO loras (name, path, status, created_at) VALUES ('x', 'p', 'odd', 0)"
            )
    finally:
        await db.close()


async def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with await Storage.open(settings=settings) as storage:
        await storage.users.set_fixed_seed(7, 42)
    async with await Storage.open(settings=settings) as storage:
        assert storage.db.schema_version == LATEST
        assert (await storage.users.get_or_create_user(7)).fixed_seed == 42
    assert _user_version(settings.db_path) == LATEST
    assert not list(tmp_path.glob("*.bak-v*")), "nothing was migrated, so nothing backed up"


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await (await Database.open(path)).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match=rf"schema version 99.*up to {LATEST}"):
        await Database.open(path)
    assert _user_version(path) == 99, "the refused file must not be touched"


async def test_backup_is_made_before_migrating_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Storage.open(path, settings=_settings(tmp_path)) as storage:
        await storage.users.update_defaults(5, steps=30)
    folder = _migrations(
        tmp_path, {f"{LATEST + 1:04d}_nickname.sql": "ALTER TABLE users ADD COLUMN nickname TEXT;"}
    )
    db = await Database.open(path, migrations_dir=folder)
    try:
        assert db.schema_version == LATEST + 1
        columns = {r["name"] for r in await db.fetchall("PRAGMA table_info(users)")}
        assert "nickname" in columns
    finally:
        await db.close()
    backup = tmp_path / f"bot.sqlite3.bak-v{LATEST}"
    assert backup.is_file()
    assert _user_version(backup) == LATEST
    with contextlib.closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("SELECT steps FROM users WHERE user_id = 5").fetchone() == (30,)
    assert not list(tmp_path.glob("*.partial"))


async def test_failed_migration_leaves_database_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await (await Database.open(path)).close()
    folder = _migrations(
        tmp_path,
        {f"{LATEST + 1:04d}_broken.sql": "CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;\n"},
    )
    with pytest.raises(StorageError, match=rf"{LATEST + 1:04d}_broken.sql.*not changed"):
        await Database.open(path, migrations_dir=folder)
    assert _user_version(path) == LATEST
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables
    db = await Database.open(path)  # still usable with the real migrations
    await db.close()


def test_migration_numbers_must_have_no_gaps(tmp_path: Path) -> None:
    folder = _migrations(tmp_path, {f"{LATEST + 2:04d}_skip.sql": "SELECT 1;"})
    with pytest.raises(StorageError, match="without gaps"):
        discover_migrations(folder)


@pytest.mark.parametrize("with_backup", [False, True])
async def test_file_that_is_not_sqlite_is_refused_with_restore_advice(
    tmp_path: Path, with_backup: bool
) -> None:
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"this is a text file, not a database\n" * 50)
    if with_backup:
        (tmp_path / "bot.sqlite3.bak-v1").write_bytes(b"")
    with pytest.raises(StorageError) as caught:
        await Database.open(path)
    message = str(caught.value)
    assert "damaged" in message and "move the file away" in message
    if with_backup:
        assert "bot.sqlite3.bak-v1" in message and "copy the backup" in message
    else:
        assert "No backup" in message


async def test_damaged_pages_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Storage.open(path, settings=_settings(tmp_path)) as storage:
        for i in range(150):
            await storage.blocked_words.add_blocked_word(f"word{i} " + "x" * 80)
    assert path.stat().st_size > 4096 * 4
    with path.open("r+b") as handle:  # overwrite a b-tree page in the middle of the file
        handle.seek(4096 * 3)
        handle.write(b"\xff" * 4096)
    with pytest.raises(StorageError, match=r"damaged.*(malformed|integrity)"):
        await Database.open(path)


async def test_locked_database_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await (await Database.open(path)).close()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO settings (key, value, updated_at) VALUES ('k', '1', 0)")
        with pytest.raises(StorageError, match="locked by another program"):
            await Database.open(path, busy_timeout_ms=100)
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_parent_that_is_a_file_gives_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(StorageError, match="Cannot create the folder"):
        await Database.open(tmp_path / "data" / "bot.sqlite3")


async def test_path_that_is_a_folder_gives_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bot.sqlite3").mkdir()
    with pytest.raises(StorageError, match="is a folder"):
        await Database.open(tmp_path / "bot.sqlite3")


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable even for root (immutable flag), or chmod it for other users."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root (permissions do not apply) and chattr is not available")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and chattr +i is not supported here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_read_only_folder_gives_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with _read_only(folder), pytest.raises(StorageError, match="not writable"):
        await Database.open(folder / "bot.sqlite3")


async def test_read_only_file_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await (await Database.open(path)).close()
    with _read_only(path), pytest.raises(StorageError, match="read-only"):
        await Database.open(path)


def test_sqlite_read_only_error_is_explained(tmp_path: Path) -> None:
    """The message for SQLite's own read-only error (a file SQLite could only open read-only)."""
    path = tmp_path / "bot.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with contextlib.closing(read_only), pytest.raises(sqlite3.Error) as caught:
        read_only.execute("INSERT INTO t VALUES (1)")
    assert sqlite_error_kind(caught.value) == "readonly"
    assert "writable by the user running the bot" in str(explain_sqlite_error(caught.value, path))


async def test_failed_transaction_is_rolled_back(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)", ("a", "1", 0)
                )
                raise RuntimeError("boom")
        assert await db.fetchone("SELECT * FROM settings WHERE key = ?", ("a",)) is None
    finally:
        await db.close()


async def test_concurrent_writers_do_not_interleave(tmp_path: Path) -> None:
    async with await Storage.open(settings=_settings(tmp_path)) as storage:
        jobs = await asyncio.gather(
            *(
                storage.create_job(NewJob(user_id=i % 3, work=GenerationRequest(f"job {i}")))
                for i in range(40)
            )
        )
        assert len({j.id for j in jobs}) == 40
        stored = [await storage.get_job(j.id) for j in jobs]
        assert [s.work for s in stored if s] == [j.work for j in jobs]
        assert [j.request.prompt for j in jobs] == [f"job {i}" for i in range(40)]
        assert len(await storage.unfinished_jobs()) == 40


def test_storage_does_not_import_torch_or_discord() -> None:
    code = (
        "import sys, storage, storage.store; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'discord')); "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr
