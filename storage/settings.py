"""Storage settings (database file, output and LoRA folders), read from STORAGE_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from engine.settings_base import SettingsSection


class StorageSettings(SettingsSection):
    """Where the bot keeps its database, generated images and LoRA adapters."""

    model_config = SettingsConfigDict(env_prefix="STORAGE_")
    # Storage writes the images and the LoRA folders, so its names survive the merge with the
    # engine's (engine.config reads STORAGE_OUTPUTS_DIR and STORAGE_LORA_DIR by name).
    renamed = {"GEN_OUTPUT_DIR": "outputs_dir"}

    db_path: Path = Field(
        default=Path("data/bot.sqlite3"),
        description="SQLite database file (created with its folder if missing).",
    )
    outputs_dir: Path = Field(
        default=Path("outputs"),
        description="Folder under which generated images are saved (also by python -m engine).",
    )
    lora_dir: Path = Field(
        default=Path("models/lora"),
        description="Folder holding one sub-folder per LoRA adapter (also where <lora:NAME:w> "
        "looks in python -m engine).",
    )
    embedding_dir: Path = Field(
        default=Path("models/embeddings"),
        description="Folder holding textual-inversion embeddings added with /embedding add.",
    )
    busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        description="How long opening the database at start-up waits for a lock held by another "
        "program, in ms (once running, see 'Another program has the database open').",
    )
    min_free_mb: int = Field(
        default=300,
        ge=0,
        description="New work (/imagine, buttons, /train) is refused while the disk holding the "
        "outputs folder or the database has less free space than this, in MB; doctor and "
        "/admin stats warn below it.",
    )
    full_disk_wait_s: float = Field(
        default=3600.0,
        ge=0,
        description="How long a finished job whose images a full outputs disk refused waits "
        "for space (images kept in memory, saved again every few seconds) before it fails.",
    )
