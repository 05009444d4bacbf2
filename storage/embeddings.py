"""Textual-inversion embedding records: register, list, look up and delete (names unique, any case)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, fields

from storage.db import Database
from storage.errors import AlreadyExistsError
from storage.loras import check_lora_name


@dataclass(frozen=True)
class EmbeddingRecord:
    """One embedding known to the bot."""

    id: int
    name: str
    path: str
    owner_id: int | None
    vectors: int
    width: int
    sha256: str | None
    base_model: str | None
    created_at: float


_COLUMNS = ", ".join(f.name for f in fields(EmbeddingRecord))


class EmbeddingsRepo:
    """Reads and updates rows of the ``embeddings`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        name: str,
        *,
        path: str,
        vectors: int,
        width: int,
        owner_id: int | None = None,
        sha256: str | None = None,
        base_model: str | None = None,
    ) -> EmbeddingRecord:
        """Register an embedding; AlreadyExistsError if the name is taken (in any letter case)."""
        check_lora_name(name)  # same rule: a word in prompts and a file name
        try:
            async with self._db.transaction() as tx:
                result = await tx.execute(
                    "INSERT INTO embeddings (name, path, owner_id, vectors, width, sha256,"
                    " base_model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, str(path), owner_id, vectors, width, sha256, base_model, time.time()),
                )
                row = await tx.fetchone(
                    f"SELECT {_COLUMNS} FROM embeddings WHERE id = ?", (result.lastrowid,)
                )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"an embedding named {name!r} already exists") from None
        assert row is not None
        return EmbeddingRecord(**dict(row))

    async def get(self, name: str) -> EmbeddingRecord | None:
        """The embedding called ``name`` (any letter case), or None."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM embeddings WHERE name = ? COLLATE NOCASE", (name,)
        )
        return None if row is None else EmbeddingRecord(**dict(row))

    async def list(self) -> list[EmbeddingRecord]:
        """Every embedding, by name."""
        rows = await self._db.fetchall(f"SELECT {_COLUMNS} FROM embeddings ORDER BY name")
        return [EmbeddingRecord(**dict(r)) for r in rows]

    async def delete(self, name: str) -> bool:
        """Forget an embedding record; return whether one was removed."""
        async with self._db.transaction() as tx:
            result = await tx.execute(
                "DELETE FROM embeddings WHERE name = ? COLLATE NOCASE", (name,)
            )
        return result.rowcount > 0
