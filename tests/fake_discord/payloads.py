"""Builders for INTERACTION_CREATE payloads, typed from the commands the bot registered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .models import FakeAttachment, FakeChannel, FakeGuild, FakeMessage, FakeRole, FakeUser

if TYPE_CHECKING:
    from .server import FakeDiscord

SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
INTEGER, NUMBER, ATTACHMENT = 4, 10, 11


def find_command(fake: FakeDiscord, guild: FakeGuild, name: str) -> dict[str, Any]:
    """The registered command named ``name`` (guild commands first, then global)."""
    for scope in (guild.id, None):
        for command in fake.registered_commands.get(scope, []):
            if command["name"] == name and command.get("type", 1) == 1:
                return command
    known = {scope: [c["name"] for c in cmds] for scope, cmds in fake.registered_commands.items()}
    raise LookupError(
        f"slash command {name!r} was not synced for guild {guild.id}; registered: {known}"
    )


def _option_value(
    fake: FakeDiscord, guild: FakeGuild, kind: int, value: Any, resolved: dict[str, dict[str, Any]]
) -> Any:
    """The wire value of one option, filling ``resolved`` for snowflake-typed options."""
    if isinstance(value, FakeAttachment):
        resolved.setdefault("attachments", {})[str(value.id)] = value.payload(fake.base_url)
        return str(value.id)
    if isinstance(value, FakeUser):
        resolved.setdefault("users", {})[str(value.id)] = value.payload()
        if value.id in guild.members:
            member = guild.member_payload(value, with_permissions=True)
            member.pop("user")
            resolved.setdefault("members", {})[str(value.id)] = member
        return str(value.id)
    if isinstance(value, FakeChannel):
        channel = {**value.payload(), "permissions": str(guild.permissions_for(fake.bot_user))}
        resolved.setdefault("channels", {})[str(value.id)] = channel
        return str(value.id)
    if isinstance(value, FakeRole):
        resolved.setdefault("roles", {})[str(value.id)] = value.payload()
        return str(value.id)
    if kind == INTEGER and not isinstance(value, str):
        return int(value)
    if kind == NUMBER and not isinstance(value, str):
        return float(value)
    return value


def command_data(
    fake: FakeDiscord,
    guild: FakeGuild,
    path: str | Sequence[str],
    options: Mapping[str, Any],
    *,
    focused: str | None,
) -> dict[str, Any]:
    """The ``data`` of an APPLICATION_COMMAND (or autocomplete) interaction for ``path``."""
    parts = path.split() if isinstance(path, str) else list(path)
    command = find_command(fake, guild, parts[0])
    schema: list[dict[str, Any]] = command.get("options") or []
    chain: list[tuple[int, str]] = []
    for name in parts[1:]:
        sub = next((o for o in schema if o["name"] == name and o["type"] in (1, 2)), None)
        if sub is None:
            raise LookupError(
                f"{' '.join(parts)!r}: no subcommand {name!r} in {[o['name'] for o in schema]}"
            )
        chain.append((sub["type"], name))
        schema = sub.get("options") or []
    if schema and any(o["type"] in (1, 2) for o in schema):
        raise LookupError(f"{' '.join(parts)!r} is a group; name a subcommand")

    resolved: dict[str, dict[str, Any]] = {}
    leaf: list[dict[str, Any]] = []
    by_name = {o["name"]: o for o in schema}
    for name, value in options.items():
        spec = by_name.get(name)
        if spec is None:
            raise LookupError(
                f"{' '.join(parts)!r} has no option {name!r}; it has {sorted(by_name)}"
            )
        kind = spec["type"]
        if kind == ATTACHMENT and name != focused and not isinstance(value, FakeAttachment):
            raise TypeError(
                f"option {name!r} takes a FakeAttachment (see FakeDiscord.add_attachment)"
            )
        option: dict[str, Any] = {"name": name, "type": kind}
        if name == focused:
            option["value"] = str(value)
            option["focused"] = True
        else:
            option["value"] = _option_value(fake, guild, kind, value, resolved)
        leaf.append(option)
    if focused is None:
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in options]
        if missing:
            raise LookupError(f"{' '.join(parts)!r}: missing required options {missing}")
    elif focused not in options:
        raise LookupError(f"focused option {focused!r} must be in options")

    nested = leaf
    for kind, name in reversed(chain):
        nested = [{"name": name, "type": kind, "options": nested}]
    data: dict[str, Any] = {
        "id": command["id"],
        "name": command["name"],
        "type": 1,
        "options": nested,
    }
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return data


def interaction(
    fake: FakeDiscord,
    interaction_id: int,
    token: str,
    type_: int,
    user: FakeUser,
    channel: FakeChannel,
    data: dict[str, Any],
    message: FakeMessage | None,
) -> dict[str, Any]:
    """A complete INTERACTION_CREATE payload from ``user`` in a guild ``channel``."""
    guild = channel.guild
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(fake.application_id),
        "type": type_,
        "data": data,
        "guild_id": str(guild.id),
        "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
        "channel_id": str(channel.id),
        "channel": channel.payload(),
        "member": guild.member_payload(user, with_permissions=True),
        "token": token,
        "version": 1,
        "app_permissions": str(guild.permissions_for(fake.bot_user)),
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": str(guild.id)},
        "context": 0,
        "attachment_size_limit": fake.attachment_size_limit,
    }
    if message is not None:
        payload["message"] = message.payload(fake.base_url)
    return payload
