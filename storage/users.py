"""User profiles: fixed/last seed, personal generation defaults, active LoRA, ban flag."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from storage.db import Database, Transaction
from storage.errors import NotFoundError

log = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1  # SQLite integers are signed 64-bit


@dataclass(frozen=True)
class UserProfile:
    """A member's saved preferences; None in a default field means "use the global default"."""

    user_id: int
    fixed_seed: int | None = None
    last_seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    negative_prompt: str | None = None
    lora_name: str | None = None
    lora_scale: float | None = None
    banned: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    model: str | None = None  # a MODEL_CHOICES name picked in /settings

    def defaults(self) -> dict[str, Any]:
        """The personal defaults this user has set (fields left at the global default omitted)."""
        return {
            name: getattr(self, name) for name in DEFAULT_FIELDS if getattr(self, name) is not None
        }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _finite_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _non_negative_float(name: str, value: Any) -> float:
    if _finite_float(name, value) < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return float(value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    return value


def _non_empty_text(name: str, value: Any) -> str:
    if not _text(name, value).strip():
        raise ValueError(f"{name} must not be empty")
    return value.strip()


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "steps": _positive_int,
    "cfg": _non_negative_float,
    "width": _positive_int,
    "height": _positive_int,
    "sampler": _non_empty_text,
    "negative_prompt": _text,
    "model": _non_empty_text,
}
DEFAULT_FIELDS: tuple[str, ...] = tuple(_VALIDATORS)
_COLUMNS = ", ".join(f.name for f in fields(UserProfile))


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def _profile(row: sqlite3.Row) -> UserProfile:
    data = dict(row)
    data["banned"] = bool(data["banned"])
    if data["lora_name"] is None:  # the LoRA was deleted (ON DELETE SET NULL)
        data["lora_scale"] = None
    return UserProfile(**data)


class UsersRepo:
    """Reads and updates rows of the ``users`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_user(self, user_id: int) -> UserProfile | None:
        """The profile of ``user_id``, or None if the user never used the bot."""
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else _profile(row)

    async def get_or_create_user(self, user_id: int) -> UserProfile:
        """The profile of ``user_id``, created with global defaults if missing."""
        profile = await self.get_user(user_id)  # a read: it needs no write lock
        if profile is not None:
            return profile
        async with self._db.transaction() as tx:
            return await self._ensure_and_update(tx, user_id, {})

    async def _ensure_and_update(
        self, tx: Transaction, user_id: int, changes: dict[str, Any]
    ) -> UserProfile:
        now = time.time()
        await tx.execute(
            "INSERT INTO users (user_id, created_at, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO NOTHING",
            (user_id, now, now),
        )
        if changes:
            # Column names come from a fixed whitelist (never from the caller's text).
            assignments = ", ".join(f"{column} = ?" for column in changes)
            await tx.execute(
                f"UPDATE users SET {assignments}, updated_at = ? WHERE user_id = ?",
                (*changes.values(), now, user_id),
            )
        row = await tx.fetchone(f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
        assert row is not None
        return _profile(row)

    async def _update(
        self, user_id: int, changes: dict[str, Any], tx: Transaction | None = None
    ) -> UserProfile:
        async with self._db.within(tx) as tx:
            return await self._ensure_and_update(tx, user_id, changes)

    async def set_fixed_seed(self, user_id: int, seed: int) -> UserProfile:
        """Use ``seed`` for every generation of this user until cleared."""
        return await self._update(user_id, {"fixed_seed": _check_seed(seed)})

    async def clear_fixed_seed(self, user_id: int) -> UserProfile:
        """Go back to a random seed per generation."""
        return await self._update(user_id, {"fixed_seed": None})

    async def set_last_seed(
        self, user_id: int, seed: int, *, tx: Transaction | None = None
    ) -> UserProfile:
        """Remember the seed of the user's latest image (for ``/seed show`` and rerolls)."""
        return await self._update(user_id, {"last_seed": _check_seed(seed)}, tx)

    async def update_defaults(self, user_id: int, **fields: Any) -> UserProfile:
        """Set personal defaults (steps, cfg, size, sampler, negative_prompt, model); None resets one."""
        unknown = sorted(set(fields) - set(_VALIDATORS))
        if unknown:
            raise ValueError(
                f"unknown default field(s) {', '.join(unknown)}; allowed: {', '.join(DEFAULT_FIELDS)}"
            )
        changes = {
            name: None if value is None else _VALIDATORS[name](name, value)
            for name, value in fields.items()
        }
        return await self._update(user_id, changes)

    async def reset_defaults(self, user_id: int) -> UserProfile:
        """Forget all personal defaults (seeds, LoRA and ban flag are kept)."""
        return await self._update(user_id, dict.fromkeys(DEFAULT_FIELDS))

    async def set_active_lora(self, user_id: int, name: str, scale: float = 1.0) -> UserProfile:
        """Apply the LoRA ``name`` at ``scale`` to this user's generations; NotFoundError if unknown."""
        scale = _finite_float("lora scale", scale)
        async with self._db.transaction() as tx:
            row = await tx.fetchone("SELECT name FROM loras WHERE name = ?", (name,))
            if row is None:
                raise NotFoundError(f"there is no LoRA named {name!r}")
            return await self._ensure_and_update(
                tx, user_id, {"lora_name": row["name"], "lora_scale": scale}
            )

    async def clear_active_lora(self, user_id: int) -> UserProfile:
        """Generate without a LoRA."""
        return await self._update(user_id, {"lora_name": None, "lora_scale": None})

    async def set_banned(self, user_id: int, banned: bool = True) -> UserProfile:
        """Ban or unban a user from using the bot."""
        profile = await self._update(user_id, {"banned": int(bool(banned))})
        log.info("User %s banned=%s", user_id, bool(banned))
        return profile

    async def banned_user_ids(self) -> list[int]:
        """Ids of all banned users."""
        rows = await self._db.fetchall(
            "SELECT user_id FROM users WHERE banned = 1 ORDER BY user_id"
        )
        return [int(r["user_id"]) for r in rows]
