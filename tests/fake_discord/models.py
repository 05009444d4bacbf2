"""Entities of the fake Discord (users, guilds, channels, roles, messages) and their JSON payloads."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
_START_MS = 1704067200000  # 2024-01-01: ids are stable across runs, not tied to the clock


class Perm(enum.IntFlag):
    """The permission bits the fake cares about (values as in the Discord API)."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 53) - 1
DEFAULT_PERMISSIONS = int(
    Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.ADD_REACTIONS
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.USE_APPLICATION_COMMANDS
    | Perm.SEND_MESSAGES_IN_THREADS
    | Perm.CREATE_INSTANT_INVITE
)
LOADING_FLAG = 1 << 7
EPHEMERAL_FLAG = 1 << 6


class Snowflakes:
    """Deterministic, increasing snowflake ids (the same sequence on every run)."""

    def __init__(self, start_ms: int = _START_MS) -> None:
        self._ms = start_ms - DISCORD_EPOCH_MS
        self._n = 0

    def next(self) -> int:
        """Return the next id."""
        self._n += 1
        return ((self._ms + self._n) << 22) | (self._n & 0xFFF)


def iso_now() -> str:
    """Current UTC time in Discord's ISO 8601 format."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


@dataclass(eq=False)
class FakeUser:
    """A Discord user (or the bot itself when ``bot`` is true)."""

    id: int
    name: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        """User object as sent by Discord."""
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    """A guild role with a permission bitfield."""

    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0

    def payload(self) -> dict[str, Any]:
        """Role object as sent by Discord."""
        return {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeChannel:
    """A guild text channel (``nsfw`` marks an age-restricted one)."""

    id: int
    guild: FakeGuild
    name: str
    nsfw: bool = False
    position: int = 0
    type: int = 0

    def payload(self) -> dict[str, Any]:
        """Channel object as sent by Discord."""
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild.id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeMember:
    """A user's membership in a guild."""

    user: FakeUser
    roles: list[FakeRole] = field(default_factory=list)
    joined_at: str = field(default_factory=iso_now)


@dataclass(eq=False)
class FakeGuild:
    """A guild with an owner, roles (``@everyone`` first), channels and members."""

    id: int
    name: str
    owner: FakeUser
    _ids: Snowflakes = field(repr=False)
    roles: list[FakeRole] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)
    members: dict[int, FakeMember] = field(default_factory=dict)

    @property
    def everyone(self) -> FakeRole:
        """The ``@everyone`` role (its id is the guild id)."""
        return self.roles[0]

    def add_role(self, name: str, permissions: int = 0) -> FakeRole:
        """Create a role with the given permission bits."""
        role = FakeRole(self._ids.next(), self.id, name, int(permissions), position=len(self.roles))
        self.roles.append(role)
        return role

    def add_channel(self, name: str, *, nsfw: bool = False) -> FakeChannel:
        """Create a text channel; ``nsfw=True`` marks it age-restricted."""
        channel = FakeChannel(self._ids.next(), self, name, nsfw=nsfw, position=len(self.channels))
        self.channels.append(channel)
        return channel

    def add_member(
        self,
        user: FakeUser,
        *,
        roles: tuple[FakeRole, ...] | list[FakeRole] = (),
        manage_guild: bool = False,
    ) -> FakeMember:
        """Add ``user`` to the guild; ``manage_guild=True`` gives them a role with Manage Server."""
        member_roles = list(roles)
        if manage_guild:
            managers = next((r for r in self.roles if r.name == "Managers"), None)
            if managers is None:
                managers = self.add_role("Managers", int(Perm.MANAGE_GUILD) | DEFAULT_PERMISSIONS)
            member_roles.append(managers)
        member = FakeMember(user, member_roles)
        self.members[user.id] = member
        return member

    def member(self, user: FakeUser) -> FakeMember:
        """The membership of ``user``; raises ``LookupError`` when not a member."""
        try:
            return self.members[user.id]
        except KeyError:
            raise LookupError(f"{user.name} is not a member of guild {self.name}") from None

    def permissions_for(self, user: FakeUser) -> int:
        """Guild-level permissions of ``user`` (owner and administrators get all)."""
        if user.id == self.owner.id:
            return ALL_PERMISSIONS
        perms = self.everyone.permissions
        for role in self.member(user).roles:
            perms |= role.permissions
        if perms & Perm.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def channel(self, channel_id: int) -> FakeChannel | None:
        """The channel with this id, if it belongs to this guild."""
        return next((c for c in self.channels if c.id == channel_id), None)

    def member_payload(self, user: FakeUser, *, with_permissions: bool = False) -> dict[str, Any]:
        """Guild member object; interactions carry ``permissions`` as a string bitfield."""
        member = self.member(user)
        data: dict[str, Any] = {
            "user": user.payload(),
            "roles": [str(r.id) for r in member.roles],
            "nick": None,
            "avatar": None,
            "joined_at": member.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }
        if with_permissions:
            data["permissions"] = str(self.permissions_for(user))
        return data

    def payload(self) -> dict[str, Any]:
        """Full GUILD_CREATE payload."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(self.owner.id),
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "joined_at": iso_now(),
            "features": [],
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "system_channel_id": str(self.channels[0].id) if self.channels else None,
            "system_channel_flags": 0,
            "roles": [r.payload() for r in self.roles],
            "channels": [c.payload() for c in self.channels],
            "members": [self.member_payload(m.user) for m in self.members.values()],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "emojis": [],
            "stickers": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
        }


@dataclass(eq=False)
class FakeAttachment:
    """A file stored and served by the fake at ``/attachments/{id}/{filename}``."""

    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None

    def payload(self, base_url: str) -> dict[str, Any]:
        """Attachment object pointing at the fake's own URL."""
        url = f"{base_url}/attachments/{self.id}/{self.filename}"
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": url,
            "proxy_url": url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description:
            data["description"] = self.description
        return data


@dataclass(eq=False)
class FakeMessage:
    """A message the bot created (in a channel or as an interaction response/followup)."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    webhook_id: int | None = None
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    deleted: bool = False
    nonce: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def custom_ids(self) -> list[str]:
        """Custom ids of all components (buttons, selects) on the message."""
        found: list[str] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if "custom_id" in item:
                    found.append(item["custom_id"])
                walk(item.get("components", []))

        walk(self.components)
        return found

    def payload(self, base_url: str) -> dict[str, Any]:
        """Message object as returned by Discord."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.payload(base_url) for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.nonce is not None:
            data["nonce"] = self.nonce
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        return data
