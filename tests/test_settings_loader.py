"""The one settings loader: all eight sections, every problem at once, renamed variables."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from botcore.settings import BotSettings, DiscordSettings, load_settings
from engine.config import SECTIONS, ConfigError, QueueConfig, load_config
from engine.settings_base import SettingsSection, env_name
from storage import StorageSettings
from webapi.settings import ApiSettings

ROOT = Path(__file__).resolve().parent.parent
PREFIXES = ("DISCORD_", "BOT_", "STORAGE_", "MODEL_", "OPT_", "GEN_", "QUEUE_", "WORKERS_")
RENAMED = {
    "BOT_PROGRESS_PREVIEWS": "QUEUE_PREVIEWS",
    "BOT_EDIT_INTERVAL_S": "QUEUE_PROGRESS_INTERVAL_S",
    "GEN_OUTPUT_DIR": "STORAGE_OUTPUTS_DIR",
    "GEN_FAST_LORA": "GEN_DRAFT_LORA",
    "GEN_FAST_STEPS": "GEN_DRAFT_STEPS",
    "GEN_FAST_GUIDANCE": "GEN_DRAFT_GUIDANCE",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIXES):
            monkeypatch.delenv(name)


def deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is deprecated" in r.getMessage()]


def test_every_section_subclasses_the_one_base() -> None:
    sections = [*SECTIONS.values(), DiscordSettings, BotSettings, StorageSettings, ApiSettings]
    assert len(sections) == 9
    for section in sections:
        assert issubclass(section, SettingsSection)
        own = section.__dict__["model_config"]
        assert own["env_prefix"].endswith("_") and own["env_file"] == ".env", section


def test_problems_of_several_sections_are_reported_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEN_WIDTH", "500")
    monkeypatch.setenv("BOT_NSFW_MODE", "sometimes")
    monkeypatch.setenv("STORAGE_BUSY_TIMEOUT_MS", "-1")
    monkeypatch.setenv("DISCORD_DEV_GUILD_ID", "my-server")
    monkeypatch.setenv("QUEUE_PER_USER_CAP", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None)
    message = str(info.value)
    for name in (
        "GEN_WIDTH='500'",
        "BOT_NSFW_MODE='sometimes'",
        "STORAGE_BUSY_TIMEOUT_MS='-1'",
        "DISCORD_DEV_GUILD_ID='my-server'",
        "QUEUE_PER_USER_CAP='0'",
    ):
        assert name in message, name
    assert "\n" not in message and message.startswith("Invalid setting ")


def test_all_sections_come_from_the_env_file(tmp_path: Path) -> None:
    env = tmp_path / "bot.env"
    env.write_text(
        "DISCORD_TOKEN=abc\nBOT_ADMIN_USER_IDS=1,2\nSTORAGE_DB_PATH=db.sqlite3\n"
        "WORKERS_AFFINITY_WINDOW=5\nQUEUE_PREVIEWS=false\nSTORAGE_LORA_DIR=adapters\n"
    )
    settings = load_settings(env)
    assert settings.discord.token is not None and settings.discord.token.get_secret_value() == "abc"
    assert settings.bot.admin_user_ids == [1, 2]
    assert settings.storage.db_path == Path("db.sqlite3")
    assert settings.config.workers.affinity_window == 5
    assert settings.config.queue.previews is False
    # One LoRA folder for the bot's storage and the engine's <lora:NAME:w> lookup.
    assert settings.storage.lora_dir == settings.config.generation.lora_dir == Path("adapters")


@pytest.mark.parametrize(
    ("old", "value", "field", "expected"),
    [
        ("BOT_PROGRESS_PREVIEWS", "false", ("queue", "previews"), False),
        ("BOT_EDIT_INTERVAL_S", "4", ("queue", "progress_interval_s"), 4.0),
        ("GEN_OUTPUT_DIR", "pictures", ("generation", "output_dir"), Path("pictures")),
    ],
)
def test_an_old_name_still_works_and_logs_one_line(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    old: str,
    value: str,
    field: tuple[str, str],
    expected: object,
) -> None:
    monkeypatch.setenv(old, value)
    with caplog.at_level(logging.WARNING):
        settings = load_settings(env_file=None)
    section, name = field
    assert getattr(getattr(settings.config, section), name) == expected
    assert deprecations(caplog) == [f"{old} is deprecated; use {RENAMED[old]}"]


def test_old_output_dir_sets_both_readers_of_the_one_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = tmp_path / ".env"
    env.write_text("GEN_OUTPUT_DIR=pictures\n")
    with caplog.at_level(logging.WARNING):
        settings = load_settings(env)
    assert settings.storage.outputs_dir == settings.config.generation.output_dir
    assert settings.storage.outputs_dir == Path("pictures")
    # Two sections read it, but the notice is one line per old name and start-up.
    assert deprecations(caplog) == ["GEN_OUTPUT_DIR is deprecated; use STORAGE_OUTPUTS_DIR"]


def test_the_new_name_wins_and_the_line_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BOT_EDIT_INTERVAL_S", "3")
    monkeypatch.setenv("QUEUE_PROGRESS_INTERVAL_S", "2")
    with caplog.at_level(logging.WARNING):
        assert load_config(env_file=None).queue.progress_interval_s == 2.0
    (line,) = deprecations(caplog)
    assert line.startswith("BOT_EDIT_INTERVAL_S is deprecated; use QUEUE_PROGRESS_INTERVAL_S")
    assert "QUEUE_PROGRESS_INTERVAL_S='2' wins over BOT_EDIT_INTERVAL_S='3'" in line


def test_a_bad_value_under_an_old_name_names_the_old_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_PROGRESS_PREVIEWS", "sometimes")
    with pytest.raises(ConfigError, match="BOT_PROGRESS_PREVIEWS='sometimes'"):
        load_config(env_file=None)


def test_without_old_names_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        settings = load_settings(env_file=None)
    assert deprecations(caplog) == []
    assert settings.config.queue.previews is True
    assert settings.config.generation.output_dir == settings.storage.outputs_dir == Path("outputs")


def test_renamed_names_point_at_real_fields() -> None:
    found = {}
    for section in [*SECTIONS.values(), DiscordSettings, BotSettings, StorageSettings, ApiSettings]:
        for old, field in section.renamed.items():
            found[old] = env_name(section, field)
    assert found == RENAMED
    assert set(QueueConfig.renamed) == {"BOT_PROGRESS_PREVIEWS", "BOT_EDIT_INTERVAL_S"}


def _documented(text: str) -> list[str]:
    return re.findall(r"^\| `([A-Z_]+)` \|", text, re.M)


def test_docs_list_every_setting_once_and_old_names_only_as_renamed() -> None:
    names = {
        env_name(section, field)
        for section in [
            *SECTIONS.values(),
            DiscordSettings,
            BotSettings,
            StorageSettings,
            ApiSettings,
        ]
        for field in section.model_fields
    }
    readme = (ROOT / "README.md").read_text()
    rows = _documented(readme)
    assert sorted(rows) == sorted(names)  # every setting, each once
    example = (ROOT / ".env.example").read_text()
    # Each setting once, as `NAME=value` or commented out as `# NAME=value`.
    assert sorted(n for n, _ in _example_lines(example)) == sorted(names)
    for old in RENAMED:
        # Only in the short note on renamed settings.
        assert readme.count(f"`{old}`") == 1 and old not in dict(_example_lines(example))
        assert example.count(old) == 1


def _example_lines(text: str) -> list[tuple[str, str]]:
    """(name, value) of each setting line of .env.example, commented out (`# NAME=`) or not."""
    return re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", text, re.M)


def test_a_copied_example_file_changes_nothing(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    # Only the token is a line to fill in, and empty it is no value at all.
    assert re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.M) == [("DISCORD_TOKEN", "")]
    env = tmp_path / ".env"
    env.write_text(example)
    copied, bare = load_settings(env), load_settings(env_file=None)
    assert copied == bare
    sections = (copied.config.model, copied.config.generation, copied.bot, copied.storage)
    assert all(not section.model_fields_set for section in sections)


def test_every_commented_line_shows_the_default(tmp_path: Path) -> None:
    lines = _example_lines((ROOT / ".env.example").read_text())
    env = tmp_path / ".env"
    # Every line uncommented: each value set on purpose, and each the default.
    env.write_text("".join(f"{name}={value}\n" for name, value in lines))
    assert load_settings(env) == load_settings(env_file=None)
