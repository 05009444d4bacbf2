"""Small runtime settings kept in the database as JSON values (e.g. whether the queue is paused)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from storage.db import Database

log = logging.getLogger(__name__)

QUEUE_PAUSED = "queue_paused"


class KeyValueRepo:
    """The ``settings`` table: get, set and delete JSON values by key."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        row = await self._db.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return default if row is None else json.loads(row["value"])

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (anything JSON can hold) under ``key``."""
        encoded = json.dumps(value, allow_nan=False)
        await self._db.execute(
            "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, encoded, time.time()),
        )

    async def delete(self, key: str) -> bool:
        """Remove ``key``; False if it was not set."""
        result = await self._db.execute("DELETE FROM settings WHERE key = ?", (key,))
        return result.rowcount > 0

    async def with_prefix(self, prefix: str) -> dict[str, Any]:
        """Every key starting with ``prefix`` (a plain prefix, no wildcards) and its value."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self._db.fetchall(
            "SELECT key, value FROM settings WHERE key LIKE ? ESCAPE '\\' ORDER BY key",
            (escaped + "%",),
        )
        return {row["key"]: json.loads(row["value"]) for row in rows}

    async def is_queue_paused(self) -> bool:
        """Whether an admin paused the queue (survives restarts)."""
        return bool(await self.get(QUEUE_PAUSED, False))

    async def set_queue_paused(self, paused: bool) -> None:
        """Pause or resume the queue."""
        await self.set(QUEUE_PAUSED, bool(paused))
        log.info("Queue paused=%s", bool(paused))
