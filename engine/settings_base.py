"""The base of every settings section, and the one loader that reads sections from the environment.

Torch-free and storage-free: engine/, storage/ and botcore/ sections all subclass `SettingsSection`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

ENV_FILE = ".env"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable and what is allowed."""


class SettingsSection(BaseSettings):
    """A group of settings read from variables sharing one prefix (a subclass sets `env_prefix`)."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        populate_by_name=True,
        protected_namespaces=(),
        validate_default=True,
    )
    # Old variable name -> the field of this section it still sets (read by `load_sections`).
    renamed: ClassVar[dict[str, str]] = {}


def env_name(section: type[BaseSettings], field: str) -> str:
    """The environment variable that sets `field` of a settings section."""
    alias = section.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[-1]).upper()
    if isinstance(alias, str):
        return alias.upper()
    return (str(section.model_config.get("env_prefix", "")) + field).upper()


def read_env(env_file: str | Path | None = ENV_FILE) -> dict[str, str]:
    """Variables from `.env` overlaid by the environment (which wins), empty ones dropped."""
    from dotenv import dotenv_values

    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v})
    values.update({k.upper(): v for k, v in os.environ.items() if v})
    return values


def describe_validation_error(
    section: type[BaseSettings], exc: ValidationError, names: Mapping[str, str] | None = None
) -> str:
    """Turn a pydantic error into lines naming the variable, the bad value and what is allowed.

    `names` maps a field to the variable its value came from when that is not its own (an old name).
    """
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        if names and field in names:
            name = names[field]
        elif field in section.model_fields:
            name = env_name(section, field)
        else:
            name = field.upper()
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"must be one of {expected.replace(' or ', ', ')}"
        lines.append(f"{name}={err.get('input')!r}: {msg}")
    return "; ".join(lines)


def _renamed_values(
    section: type[SettingsSection], values: Mapping[str, str], notices: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Values that old names give this section (when the new name is unset), and their sources."""
    overrides: dict[str, str] = {}
    sources: dict[str, str] = {}
    for old, field in section.renamed.items():
        if old not in values:
            continue
        new = env_name(section, field)
        notice = f"{old} is deprecated; use {new}"
        if new not in values:
            overrides[field] = values[old]
            sources[field] = old
        elif values[new] != values[old]:
            notice += f" ({new}={values[new]!r} wins over {old}={values[old]!r})"
        notices.setdefault(old, notice)
    return overrides, sources


def load_sections(
    sections: Mapping[str, type[SettingsSection]], env_file: str | Path | None = ENV_FILE
) -> dict[str, Any]:
    """Read each section from the environment and `.env`, keyed like `sections`.

    Raises ConfigError naming every bad variable of every section at once. An old (renamed)
    variable still works and is logged once per load as deprecated.
    """
    values = read_env(env_file)
    built: dict[str, Any] = {}
    problems: list[str] = []
    notices: dict[str, str] = {}
    for key, section in sections.items():
        overrides, sources = _renamed_values(section, values, notices)
        try:
            built[key] = section(_env_file=env_file, **overrides)  # type: ignore[call-arg]
        except ValidationError as exc:
            problems.append(describe_validation_error(section, exc, sources))
    for notice in notices.values():
        log.warning("%s", notice)
    if problems:
        raise ConfigError("Invalid setting " + "; ".join(problems))
    return built
