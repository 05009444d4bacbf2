"""Durable state of the bot: SQLite (aiosqlite) with migrations, repositories, safe file paths."""

from storage.db import Database
from storage.errors import AlreadyExistsError, DiskFullError, NotFoundError, StorageError
from storage.files import (
    FileRoots,
    UnsafePathError,
    atomic_dir,
    atomic_write_bytes,
    safe_join,
    safe_name,
)
from storage.generations import GenerationRecord, GenerationStats
from storage.loras import LoraRecord
from storage.settings import StorageSettings
from storage.store import Storage
from storage.users import UserProfile

__all__ = [
    "AlreadyExistsError",
    "Database",
    "DiskFullError",
    "FileRoots",
    "GenerationRecord",
    "GenerationStats",
    "LoraRecord",
    "NotFoundError",
    "Storage",
    "StorageError",
    "StorageSettings",
    "UnsafePathError",
    "UserProfile",
    "atomic_dir",
    "atomic_write_bytes",
    "safe_join",
    "safe_name",
]
