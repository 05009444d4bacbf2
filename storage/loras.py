"""LoRA adapter records: registration, visibility (shared or private), status, autocomplete."""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, fields
from typing import Literal, cast, get_args

from storage.db import Database, Transaction
from storage.errors import AlreadyExistsError, NotFoundError
from storage.files import safe_name

log = logging.getLogger(__name__)

LoraStatus = Literal["training", "ready", "failed"]
LORA_STATUSES: frozenset[str] = frozenset(get_args(LoraStatus))
AUTOCOMPLETE_LIMIT = 25  # Discord shows at most 25 choices


@dataclass(frozen=True)
class LoraRecord:
    """One LoRA adapter known to the bot."""

    id: int
    name: str
    path: str
    owner_id: int | None
    trigger_word: str | None
    sha256: str | None
    rank: int | None
    base_model: str | None
    status: LoraStatus
    shared: bool
    created_at: float
    base_width: int | None = None  # text-encoder width of the base model (768 SD 1.x, 1024 2.x)


_COLUMNS = ", ".join(f.name for f in fields(LoraRecord))


def _record(row: sqlite3.Row) -> LoraRecord:
    data = dict(row)
    data["shared"] = bool(data["shared"])
    data["status"] = cast(LoraStatus, data["status"])
    return LoraRecord(**data)


def _check_status(status: str) -> None:
    if status not in LORA_STATUSES:
        raise ValueError(f"LoRA status must be one of {sorted(LORA_STATUSES)}, got {status!r}")


def check_lora_name(name: str) -> str:
    """Return ``name`` if it is usable as a LoRA name (and folder name); raise ValueError if not."""
    suggestion = safe_name(name)  # raises UnsafePathError (a ValueError) for hostile names
    if suggestion != name:
        raise ValueError(
            f"LoRA name {name!r} may only use letters, digits, '_', '-' and '.' "
            f"(not first), at most 64 characters; for example {suggestion!r}"
        )
    return name


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class LorasRepo:
    """Reads and updates rows of the ``loras`` table (names are unique, case-insensitively)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_lora(
        self,
        name: str,
        *,
        path: str,
        owner_id: int | None = None,
        trigger_word: str | None = None,
        sha256: str | None = None,
        rank: int | None = None,
        base_model: str | None = None,
        status: LoraStatus = "ready",
        shared: bool = True,
        base_width: int | None = None,
    ) -> LoraRecord:
        """Register a LoRA; raise AlreadyExistsError if the name is taken (in any letter case)."""
        check_lora_name(name)
        _check_status(status)
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        try:
            async with self._db.transaction() as tx:
                result = await tx.execute(
                    "INSERT INTO loras (name, path, owner_id, trigger_word, sha256, rank,"
                    " base_model, status, shared, created_at, base_width)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        str(path),
                        owner_id,
                        trigger_word,
                        sha256,
                        rank,
                        base_model,
                        status,
                        int(bool(shared)),
                        time.time(),
                        base_width,
                    ),
                )
                row = await tx.fetchone(
                    f"SELECT {_COLUMNS} FROM loras WHERE id = ?", (result.lastrowid,)
                )
        except sqlite3.IntegrityError as exc:
            existing = await self.get_lora(name)
            if existing is None:
                raise
            raise AlreadyExistsError(
                f"a LoRA named {existing.name!r} already exists; choose another name "
                "or delete the old one first"
            ) from exc
        assert row is not None
        log.info("Registered LoRA %s (%s, owner %s)", name, status, owner_id)
        return _record(row)

    async def get_lora(self, name: str, *, tx: Transaction | None = None) -> LoraRecord | None:
        """The LoRA called ``name`` (any letter case), or None."""
        query = f"SELECT {_COLUMNS} FROM loras WHERE name = ?"
        row = await (tx or self._db).fetchone(query, (name,))
        return None if row is None else _record(row)

    async def list_loras(
        self, *, visible_to: int | None = None, status: LoraStatus | None = None
    ) -> list[LoraRecord]:
        """LoRAs by name; with ``visible_to``, only shared ones and that user's private ones."""
        where, params = self._filters(visible_to, status)
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM loras WHERE {where} ORDER BY name", params
        )
        return [_record(r) for r in rows]

    async def lora_names(
        self,
        prefix: str = "",
        *,
        visible_to: int | None = None,
        status: LoraStatus | None = "ready",
        limit: int = AUTOCOMPLETE_LIMIT,
    ) -> list[str]:
        """Names starting with ``prefix`` (any case) for autocomplete, at most ``limit`` (<= 25)."""
        where, params = self._filters(visible_to, status)
        limit = max(0, min(int(limit), AUTOCOMPLETE_LIMIT))
        rows = await self._db.fetchall(
            f"SELECT name FROM loras WHERE {where} AND name LIKE ? ESCAPE '\\' "
            "ORDER BY name LIMIT ?",
            (*params, _like_prefix(prefix), limit),
        )
        return [str(r["name"]) for r in rows]

    @staticmethod
    def _filters(visible_to: int | None, status: str | None) -> tuple[str, list[object]]:
        clauses, params = ["1 = 1"], []
        if visible_to is not None:
            clauses.append("(shared = 1 OR owner_id = ?)")
            params.append(visible_to)
        if status is not None:
            _check_status(status)
            clauses.append("status = ?")
            params.append(status)
        return " AND ".join(clauses), params

    async def set_lora_status(
        self,
        name: str,
        status: LoraStatus,
        *,
        sha256: str | None = None,
        path: str | None = None,
        tx: Transaction | None = None,
    ) -> LoraRecord:
        """Change a LoRA's status (e.g. training -> ready), optionally its sha256 and path."""
        _check_status(status)
        async with self._db.within(tx) as tx:
            result = await tx.execute(
                "UPDATE loras SET status = ?, sha256 = coalesce(?, sha256),"
                " path = coalesce(?, path) WHERE name = ?",
                (status, sha256, path, name),
            )
            if result.rowcount == 0:
                raise NotFoundError(f"there is no LoRA named {name!r}")
            row = await tx.fetchone(f"SELECT {_COLUMNS} FROM loras WHERE name = ?", (name,))
        assert row is not None
        return _record(row)

    async def set_lora_shared(self, name: str, shared: bool) -> LoraRecord:
        """Make a LoRA usable by everyone (shared) or only by its owner (private)."""
        async with self._db.transaction() as tx:
            result = await tx.execute(
                "UPDATE loras SET shared = ? WHERE name = ?", (int(bool(shared)), name)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"there is no LoRA named {name!r}")
            row = await tx.fetchone(f"SELECT {_COLUMNS} FROM loras WHERE name = ?", (name,))
        assert row is not None
        return _record(row)

    async def delete_lora(self, name: str, *, tx: Transaction | None = None) -> bool:
        """Forget a LoRA (users who had it active go back to none); False if it did not exist."""
        async with self._db.within(tx) as tx:
            result = await tx.execute("DELETE FROM loras WHERE name = ?", (name,))
        if result.rowcount:
            log.info("Deleted LoRA record %s", name)
        return result.rowcount > 0
