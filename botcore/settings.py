"""Bot settings (env prefixes DISCORD_ and BOT_), and `load_settings`: all nine sections at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from engine.config import SECTIONS, AppConfig
from engine.settings_base import ENV_FILE, SettingsSection, load_sections
from storage.settings import StorageSettings
from webapi.settings import ApiSettings

# Discord rate-limits message edits, so progress edits come no faster than this, whatever
# QUEUE_PROGRESS_INTERVAL_S says (the engine may report faster, e.g. for tests).
MIN_EDIT_INTERVAL_S = 0.2
IdList = Annotated[list[int], NoDecode]
WordList = Annotated[list[str], NoDecode]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
    return value


class DiscordSettings(SettingsSection):
    """How to reach Discord (env prefix DISCORD_)."""

    model_config = SettingsConfigDict(env_prefix="DISCORD_")

    token: SecretStr | None = Field(None, description="Bot token from the Developer Portal")
    dev_guild_id: int | None = Field(
        None, description="Sync commands to this server only (instant)"
    )


class BotSettings(SettingsSection):
    """How the bot behaves (env prefix BOT_)."""

    model_config = SettingsConfigDict(env_prefix="BOT_")

    admin_user_ids: IdList = Field(default_factory=list, description="User ids with admin rights")
    admin_role_ids: IdList = Field(default_factory=list, description="Role ids with admin rights")
    cooldown_s: float = Field(10.0, ge=0, le=3600, description="Seconds between /imagine per user")
    nsfw_mode: Literal["spoiler", "withhold", "allow"] = Field(
        "spoiler", description="Flagged images outside NSFW channels: spoiler, withhold or allow"
    )
    nsfw_words: WordList = Field(
        default_factory=lambda: ["nsfw", "nude", "naked", "porn", "sex", "explicit", "hentai"],
        description="Prompt words that flag an image as NSFW",
    )
    max_attachment_mb: float = Field(10.0, gt=0, le=100, description="Largest attachment accepted")
    upload_timeout_s: float = Field(
        120.0, ge=5, le=3600, description="Time limit for posting one result (then retried)"
    )
    train_min_images: int = Field(4, ge=1, le=20, description="Fewest usable images for /train")
    train_default_steps: int = Field(500, ge=1, le=20000, description="Default /train steps")
    train_max_steps: int = Field(3000, ge=1, le=20000, description="Most /train steps allowed")
    train_max_rank: int = Field(32, ge=1, le=128, description="Highest /train rank allowed")
    train_data_dir: Path = Field(Path("data/train"), description="Where /train stores its images")
    log_level: str = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR")

    @field_validator("admin_user_ids", "admin_role_ids", "nsfw_words", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("nsfw_words")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [word.lower() for word in value]


@dataclass(frozen=True)
class Settings:
    """Every section the bot reads: the engine's (`config`), Discord's, the bot's, storage's, the API's."""

    config: AppConfig
    discord: DiscordSettings
    bot: BotSettings
    storage: StorageSettings
    api: ApiSettings


def load_settings(env_file: str | Path | None = ENV_FILE) -> Settings:
    """Read all nine sections; ConfigError names every bad variable of every section at once."""
    bot_sections: dict[str, type[SettingsSection]] = {
        "discord": DiscordSettings,
        "bot": BotSettings,
        "storage": StorageSettings,
        "api": ApiSettings,
    }
    sections = load_sections({**SECTIONS, **bot_sections}, env_file)
    return Settings(
        config=AppConfig(**{key: sections[key] for key in SECTIONS}),
        discord=sections["discord"],
        bot=sections["bot"],
        storage=sections["storage"],
        api=sections["api"],
    )
