"""REST handlers under ``/api/v10``: login, command sync, interactions, webhooks and channel messages."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .models import EPHEMERAL_FLAG, LOADING_FLAG, FakeAttachment, FakeMessage, iso_now
from .recorder import InteractionRecord, RecordedEvent, UploadedFile
from .rules import RuleError, check_message, check_modal

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

_FILES_FIELD = re.compile(r"files\[(\d+)\]")
_BODY_KEY = web.RequestKey("fake_discord.body", tuple)


def json_response(data: Any, status: int = 200) -> web.Response:
    """JSON reply with Content-Type exactly ``application/json`` (discord.py parses nothing else)."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


def error(status: int, code: int, message: str) -> web.Response:
    """A Discord-style JSON error response."""
    return json_response({"code": code, "message": message}, status=status)


def refuse(rule: RuleError) -> web.Response:
    """The response for a broken rule (its status and Discord's error body)."""
    return json_response(rule.body, status=rule.status)


def expired_token() -> web.Response:
    """What Discord answers on a webhook route once the interaction token (15 min) expired."""
    return error(401, 50027, "Invalid Webhook Token")


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    """Parse a JSON or multipart (``payload_json`` + ``files[n]``) request body (once per request)."""
    if _BODY_KEY not in request:
        request[_BODY_KEY] = await _parse_body(request)
    return request[_BODY_KEY]


async def _parse_body(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    if request.content_type.startswith("multipart/"):
        payload: dict[str, Any] = {}
        files: list[UploadedFile] = []
        reader = await request.multipart()
        async for part in reader:
            data = await part.read()  # type: ignore[union-attr]
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(data)
            elif match := _FILES_FIELD.fullmatch(name):
                content_type = part.headers.get("Content-Type")
                files.append(
                    UploadedFile(int(match[1]), part.filename or name, bytes(data), content_type)
                )
        return payload, files
    raw = await request.read()
    return (json.loads(raw) if raw else {}), []


class RestApi:
    """The route handlers; state lives on the :class:`FakeDiscord`."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    def routes(self) -> list[web.RouteDef]:
        """All REST routes, the catch-all last."""
        base = "/api/v10"
        hook = base + "/webhooks/{app_id}/{token}"
        cmds = base + "/applications/{app_id}"
        msgs = base + "/channels/{channel_id}/messages"
        return [
            web.get(base + "/users/@me", self.get_me),
            web.get(base + "/users/{user_id}", self.get_user),
            web.get(base + "/oauth2/applications/@me", self.get_application),
            web.get(base + "/applications/@me", self.get_application),
            web.get(base + "/gateway", self.get_gateway),
            web.get(base + "/gateway/bot", self.get_gateway),
            web.put(cmds + "/commands", self.put_commands),
            web.get(cmds + "/commands", self.get_commands),
            web.put(cmds + "/guilds/{guild_id}/commands", self.put_commands),
            web.get(cmds + "/guilds/{guild_id}/commands", self.get_commands),
            web.post(base + "/interactions/{interaction_id}/{token}/callback", self.callback),
            web.post(hook, self.followup),
            web.get(hook + "/messages/{message_id}", self.webhook_message),
            web.patch(hook + "/messages/{message_id}", self.webhook_message),
            web.delete(hook + "/messages/{message_id}", self.webhook_message),
            web.post(msgs, self.create_channel_message),
            web.get(msgs + "/{message_id}", self.channel_message),
            web.patch(msgs + "/{message_id}", self.channel_message),
            web.delete(msgs + "/{message_id}", self.channel_message),
            web.post(base + "/channels/{channel_id}/typing", self.no_content),
            web.get(base + "/channels/{channel_id}", self.get_channel),
            web.get(base + "/guilds/{guild_id}", self.get_guild),
            web.get("/attachments/{attachment_id}/{filename}", self.get_attachment),
            web.route("*", base + "/{tail:.*}", self.unhandled),
        ]

    # -- login and application ---------------------------------------------------------------

    async def get_me(self, request: web.Request) -> web.Response:
        """GET /users/@me: the bot user (401 for a wrong token)."""
        expected = self.fake.token
        if expected is not None and request.headers.get("Authorization") != f"Bot {expected}":
            return error(401, 0, "401: Unauthorized")
        return json_response(
            {**self.fake.bot_user.payload(), "verified": True, "mfa_enabled": False}
        )

    async def get_user(self, request: web.Request) -> web.Response:
        """GET /users/{id}."""
        user = self.fake.users.get(int(request.match_info["user_id"]))
        return json_response(user.payload()) if user else error(404, 10013, "Unknown User")

    async def get_application(self, request: web.Request) -> web.Response:
        """GET /oauth2/applications/@me: application info for ``Client.login``."""
        fake = self.fake
        return json_response(
            {
                "id": str(fake.application_id),
                "name": fake.bot_user.name,
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "flags": fake.application_flags,
                "owner": fake.app_owner.payload(),
                "team": None,
                "bot": fake.bot_user.payload(),
            }
        )

    async def get_gateway(self, request: web.Request) -> web.Response:
        """GET /gateway and /gateway/bot."""
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response(
            {"url": self.fake.gateway_url, "shards": 1, "session_start_limit": limit}
        )

    async def put_commands(self, request: web.Request) -> web.Response:
        """PUT (bulk overwrite) global or guild commands; ids are kept stable per name."""
        guild_id = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        previous = {c["name"]: c for c in self.fake.registered_commands.get(guild_id, [])}
        stored = []
        for command in await request.json():
            old = previous.get(command["name"])
            # Discord answers a permission bitfield as a string, whatever number it was sent.
            permissions = command.get("default_member_permissions")
            stored.append(
                {
                    **command,
                    "id": old["id"] if old else str(self.fake.ids.next()),
                    "application_id": str(self.fake.application_id),
                    "guild_id": str(guild_id) if guild_id else None,
                    "type": command.get("type", 1),
                    "version": str(self.fake.ids.next()),
                    "default_member_permissions": None if permissions is None else str(permissions),
                    "description": command.get("description", ""),
                }
            )
        self.fake.registered_commands[guild_id] = stored
        return json_response(stored)

    async def get_commands(self, request: web.Request) -> web.Response:
        """GET the registered global or guild commands."""
        guild_id = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        return json_response(self.fake.registered_commands.get(guild_id, []))

    # -- interactions --------------------------------------------------------------------------

    def _check(
        self, payload: dict[str, Any], files: list[UploadedFile], prefix: tuple[str, ...] = ()
    ) -> RuleError | None:
        return check_message(
            payload, files, upload_limit=self.fake.attachment_size_limit, prefix=prefix
        )

    def _expired(self, record: InteractionRecord) -> bool:
        return self.fake.now() - record.created_at > self.fake.token_lifetime_s

    def _message_from(
        self,
        record: InteractionRecord,
        payload: dict[str, Any],
        files: list[UploadedFile],
        type_: int,
    ) -> FakeMessage:
        message = FakeMessage(
            id=self.fake.ids.next(),
            channel_id=record.channel.id,
            guild_id=record.channel.guild.id,
            author=self.fake.bot_user,
            type=type_,
            webhook_id=self.fake.application_id,
        )
        self.fake.apply_message_body(message, payload, files, edit=False)
        self.fake.messages[message.id] = message
        return message

    async def callback(self, request: web.Request) -> web.Response:
        """POST /interactions/{id}/{token}/callback: the initial response (answers JSON, not 204)."""
        record = self.fake.interactions.get(request.match_info["token"])
        if record is None or str(record.id) != request.match_info["interaction_id"]:
            return error(404, 10062, "Unknown interaction")
        late = self.fake.now() - record.created_at > self.fake.interaction_deadline_s
        payload, files = await read_body(request)
        if late and not record.responded:  # the first response must come within 3 s
            return error(404, 10062, "Unknown interaction")
        if record.responded:
            return error(400, 40060, "Interaction has already been acknowledged.")
        kind = int(payload.get("type", 0))
        data = payload.get("data") or {}
        if kind in (4, 7) and (rule := self._check(data, files, prefix=("data",))):
            return refuse(rule)
        if kind == 9:  # MODAL: only as the first answer to a command or a component
            if record.type not in (2, 3):
                return error(400, 50035, "Invalid Form Body: a modal cannot answer a modal submit")
            if rule := check_modal(data):
                return refuse(rule)
        message: FakeMessage | None = None
        if kind == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            message = self._message_from(record, data, files, 20 if record.type == 2 else 0)
        elif kind == 5:  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: a "thinking..." message
            message = self._message_from(
                record, {"flags": data.get("flags", 0)}, [], 20 if record.type == 2 else 0
            )
            message.flags |= LOADING_FLAG
        elif kind in (6, 7) and record.message is not None:  # (DEFERRED_)UPDATE_MESSAGE
            message = record.message
            if kind == 7:
                self.fake.apply_message_body(message, data, files, edit=True)
        record.original = message
        event = RecordedEvent("callback", request.method, request.path, payload, files, message)
        record.record(event)
        self.fake.events.record(event)
        base = self.fake.base_url
        interaction = {
            "id": str(record.id),
            "type": record.type,
            "response_message_id": str(message.id) if message else None,
            "response_message_loading": kind == 5,
            "response_message_ephemeral": bool(message and message.flags & EPHEMERAL_FLAG),
        }
        resource: dict[str, Any] = {"type": kind}
        if message is not None and kind in (4, 5, 7):
            resource["message"] = message.payload(base)
        return json_response({"interaction": interaction, "resource": resource})

    async def followup(self, request: web.Request) -> web.Response:
        """POST /webhooks/{app}/{token}: a followup message (404 before the callback, as Discord)."""
        record = self.fake.interactions.get(request.match_info["token"])
        payload, files = await read_body(request)
        if record is not None and self._expired(record):
            return expired_token()
        if record is None or not record.responded:
            return error(404, 10015, "Unknown Webhook")
        if rule := self._check(payload, files):
            return refuse(rule)
        message = self._message_from(record, payload, files, 0)
        record.followup_messages[message.id] = message
        event = RecordedEvent("followup", request.method, request.path, payload, files, message)
        record.record(event)
        self.fake.events.record(event)
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(message.payload(self.fake.base_url))
        return web.Response(status=204)

    async def webhook_message(self, request: web.Request) -> web.Response:
        """GET/PATCH/DELETE /webhooks/{app}/{token}/messages/{id or @original}."""
        record = self.fake.interactions.get(request.match_info["token"])
        if record is None:
            return error(404, 10015, "Unknown Webhook")
        if self._expired(record):
            return expired_token()
        message_id = request.match_info["message_id"]
        which = "original" if message_id == "@original" else "followup"
        if which == "original":
            message = record.original
        else:
            message = record.followup_messages.get(int(message_id)) or self.fake.messages.get(
                int(message_id)
            )
        if message is None or message.deleted:
            return error(404, 10008, "Unknown Message")
        payload, files = await read_body(request)
        verb = {"GET": "get", "PATCH": "edit", "DELETE": "delete"}[request.method]
        if verb == "edit" and (rule := self._check(payload, files)):
            return refuse(rule)
        if verb == "edit":
            self.fake.apply_message_body(message, payload, files, edit=True)
        elif verb == "delete":
            message.deleted = True
        event = RecordedEvent(
            f"{verb}_{which}", request.method, request.path, payload, files, message
        )
        record.record(event)
        self.fake.events.record(event)
        if verb == "delete":
            return web.Response(status=204)
        return json_response(message.payload(self.fake.base_url))

    # -- channels and guilds ------------------------------------------------------------------

    async def create_channel_message(self, request: web.Request) -> web.Response:
        """POST /channels/{id}/messages (JSON or multipart)."""
        channel = self.fake.find_channel(int(request.match_info["channel_id"]))
        if channel is None:
            return error(404, 10003, "Unknown Channel")
        payload, files = await read_body(request)
        if rule := self._check(payload, files):
            return refuse(rule)
        nonce = None if payload.get("nonce") is None else str(payload["nonce"])
        if nonce is not None and payload.get("enforce_nonce"):
            seen = self.fake.nonces.get((channel.id, nonce))
            if seen is not None and self.fake.now() - seen[0] <= self.fake.nonce_window_s:
                # Discord's enforce_nonce: the message created with this nonce, not a new one.
                self.fake.events.record(
                    RecordedEvent(
                        "duplicate_channel_message",
                        request.method,
                        request.path,
                        payload,
                        files,
                        seen[1],
                    )
                )
                return json_response(seen[1].payload(self.fake.base_url))
        message = FakeMessage(
            id=self.fake.ids.next(),
            channel_id=channel.id,
            guild_id=channel.guild.id,
            author=self.fake.bot_user,
            nonce=nonce,
        )
        self.fake.apply_message_body(message, payload, files, edit=False)
        self.fake.messages[message.id] = message
        self.fake.channel_messages.append(message)
        if nonce is not None:
            self.fake.nonces[(channel.id, nonce)] = (self.fake.now(), message)
        self.fake.events.record(
            RecordedEvent("channel_message", request.method, request.path, payload, files, message)
        )
        return json_response(message.payload(self.fake.base_url))

    async def channel_message(self, request: web.Request) -> web.Response:
        """GET/PATCH/DELETE /channels/{id}/messages/{id}."""
        message = self.fake.messages.get(int(request.match_info["message_id"]))
        if (
            message is None
            or message.deleted
            or str(message.channel_id) != request.match_info["channel_id"]
        ):
            return error(404, 10008, "Unknown Message")
        payload, files = await read_body(request)
        verb = {"GET": "get", "PATCH": "edit", "DELETE": "delete"}[request.method]
        if verb == "edit" and (rule := self._check(payload, files)):
            return refuse(rule)
        if verb == "edit":
            self.fake.apply_message_body(message, payload, files, edit=True)
        elif verb == "delete":
            message.deleted = True
        self.fake.events.record(
            RecordedEvent(
                f"{verb}_channel_message", request.method, request.path, payload, files, message
            )
        )
        if verb == "delete":
            return web.Response(status=204)
        return json_response(message.payload(self.fake.base_url))

    async def get_channel(self, request: web.Request) -> web.Response:
        """GET /channels/{id}."""
        channel = self.fake.find_channel(int(request.match_info["channel_id"]))
        return json_response(channel.payload()) if channel else error(404, 10003, "Unknown Channel")

    async def get_guild(self, request: web.Request) -> web.Response:
        """GET /guilds/{id}."""
        guild = next(
            (g for g in self.fake.guilds if str(g.id) == request.match_info["guild_id"]), None
        )
        return json_response(guild.payload()) if guild else error(404, 10004, "Unknown Guild")

    async def get_attachment(self, request: web.Request) -> web.Response:
        """GET /attachments/{id}/{filename}: the stored bytes (like the CDN)."""
        attachment = self.fake.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(
            body=attachment.data, content_type=attachment.content_type or "application/octet-stream"
        )

    async def no_content(self, request: web.Request) -> web.Response:
        """Routes that answer 204 (typing)."""
        return web.Response(status=204)

    async def unhandled(self, request: web.Request) -> web.Response:
        """Any other route: logged in ``fake.unhandled`` and answered with an empty JSON object."""
        self.fake.unhandled.append(f"{request.method} {request.path}")
        log.warning("fake discord: unhandled route %s %s", request.method, request.path)
        await request.read()
        return json_response({})


def new_attachment(
    fake: FakeDiscord, file: UploadedFile, entry: dict[str, Any] | None
) -> FakeAttachment:
    """Store an uploaded file as an attachment served by the fake."""
    entry = entry or {}
    attachment = FakeAttachment(
        id=fake.ids.next(),
        filename=entry.get("filename") or file.filename,
        data=file.data,
        content_type=file.content_type,
        description=entry.get("description"),
    )
    fake.attachments[attachment.id] = attachment
    return attachment


def apply_message_body(
    fake: FakeDiscord,
    message: FakeMessage,
    payload: dict[str, Any],
    files: list[UploadedFile],
    *,
    edit: bool,
) -> None:
    """Apply a create/edit body (content, embeds, components, flags, attachments) to a message."""
    if edit:
        message.history.append(message.payload(fake.base_url))
        message.edited_timestamp = iso_now()
        message.flags &= ~LOADING_FLAG
    for key in ("content", "embeds", "components"):
        if key in payload:
            setattr(
                message,
                key,
                payload[key] if payload[key] is not None else ([] if key != "content" else ""),
            )
    if "flags" in payload and payload["flags"] is not None:
        message.flags = (message.flags & LOADING_FLAG) | int(payload["flags"])
    by_index = {f.index: f for f in files}
    if "attachments" in payload and payload["attachments"] is not None:
        kept: list[FakeAttachment] = []
        used: set[int] = set()
        for entry in payload["attachments"]:
            entry_id = int(entry["id"])
            if entry_id in by_index and entry_id not in used:
                kept.append(new_attachment(fake, by_index[entry_id], entry))
                used.add(entry_id)
            else:
                kept.extend(a for a in message.attachments if a.id == entry_id)
        kept.extend(new_attachment(fake, f, None) for f in files if f.index not in used)
        message.attachments = kept
    else:
        base = message.attachments if edit else []
        message.attachments = base + [new_attachment(fake, f, None) for f in files]
