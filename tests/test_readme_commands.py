"""README's command table names every slash command with exactly its real options."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from discord import app_commands
from discord.ext import commands

ROOT = Path(__file__).resolve().parent.parent
COGS = ("imagine", "history", "lora", "embedding", "train", "profile", "queue", "admin")


def registered() -> dict[str, list[str]]:
    """Every command path of the cogs and its options, optional ones as `[name]`."""
    found: dict[str, list[str]] = {}

    def add(command: app_commands.Command | app_commands.Group, prefix: str = "") -> None:
        if isinstance(command, app_commands.Group):
            for sub in command.commands:
                add(sub, f"{prefix}{command.name} ")
            return
        options = [p.name if p.required else f"[{p.name}]" for p in command.parameters]
        found[f"/{prefix}{command.name}"] = options

    for name in COGS:
        module = importlib.import_module(f"cogs.{name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, commands.Cog) and cls.__module__ == module.__name__:
                for command in cls.__cog_app_commands__:
                    add(command)
    return found


def _expand(item: str) -> str:
    """`[image2 … image10]` written out as the optional options it stands for."""

    def written_out(match: re.Match[str]) -> str:
        stem, first, last = match[1], int(match[2]), int(match[3])
        return " ".join(f"[{stem}{n}]" for n in range(first, last + 1))

    return re.sub(r"\[([a-z_]+)(\d+) … \1(\d+)\]", written_out, item)


def documented() -> dict[str, list[str]]:
    """The command column of README's table: each `/path options` item."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Commands", 1)[1].split("\n\n", 2)[1]
    found: dict[str, list[str]] = {}
    for row in table.splitlines()[2:]:
        cell = row.split(" | ", 1)[0]
        for item in re.findall(r"`(/[^`]+)`", cell):
            words = _expand(item).split()
            path = words[0]
            rest = words[1:]
            # A group's subcommand: `/lora use name`; a plain command: `/queue`.
            if rest and not rest[0].startswith("[") and f"{path} {rest[0]}" in registered():
                path, rest = f"{path} {rest[0]}", rest[1:]
            assert path not in found, f"{path} is documented twice"
            found[path] = rest
    return found


def test_readme_documents_every_command_with_its_real_options() -> None:
    real, readme = registered(), documented()
    assert sorted(readme) == sorted(real)
    for path, options in real.items():
        assert readme[path] == options, (path, readme[path], options)
