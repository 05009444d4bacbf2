"""Storage settings (database file, output and LoRA folders), read from STORAGE_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    """Where the bot keeps its database, generated images and LoRA adapters."""

    model_config = SettingsConfigDict(
        env_prefix="STORAGE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
    )

    db_path: Path = Field(
        default=Path("data/bot.sqlite3"),
        description="SQLite database file (created with its folder if missing).",
    )
    outputs_dir: Path = Field(
        default=Path("outputs"),
        description="Folder under which generated images are saved.",
    )
    lora_dir: Path = Field(
        default=Path("models/lora"),
        description="Folder holding one sub-folder per LoRA adapter.",
    )
    embedding_dir: Path = Field(
        default=Path("models/embeddings"),
        description="Folder holding textual-inversion embeddings added with /embedding add.",
    )
    busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        description="How long a query waits for a lock held by another connection, in ms.",
    )
