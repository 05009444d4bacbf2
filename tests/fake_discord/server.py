"""``FakeDiscord``: the aiohttp server, its state, factories and the interaction senders."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web

from . import payloads
from .faults import Fault, FaultInjector, Handler, RouteMatcher, route_template
from .gateway import Gateway
from .models import (
    DEFAULT_PERMISSIONS,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMessage,
    FakeRole,
    FakeUser,
    Snowflakes,
)
from .recorder import EventLog, InteractionRecord, RecordedEvent, UploadedFile
from .rest import RestApi, apply_message_body
from .rules import Rejection

log = logging.getLogger(__name__)

# The default bot token: made per fake, in the shape Discord issues (see ``bot_token``).
REALISTIC: Any = object()
_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def bot_token(user_id: int) -> str:
    """A bot token shaped like Discord's: base64 user id, a timestamp part, an HMAC part."""
    return f"{_b64(str(user_id))}.{secrets.token_urlsafe(5)[:6]}.{secrets.token_urlsafe(29)[:38]}"


def interaction_token(interaction_id: int) -> str:
    """An interaction token shaped like Discord's: base64 of ``interaction:<id>:<secret>``."""
    secret = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(128))
    return _b64(f"interaction:{interaction_id}:{secret}")


CommandPath = str | Sequence[str]


class FakeDiscord:
    """A fake Discord (REST under ``/api/v10`` + websocket gateway) on 127.0.0.1."""

    def __init__(
        self,
        *,
        token: str | None = REALISTIC,
        bot_name: str = "ImageBot",
        attachment_size_limit: int = 10 * 1024 * 1024,
        heartbeat_interval_ms: int = 41250,
        privileged_intents: int = 0,
        interaction_deadline_s: float = 3.0,
        token_lifetime_s: float = 15 * 60.0,
        nonce_window_s: float = 5 * 60.0,
    ) -> None:
        self.interaction_deadline_s = interaction_deadline_s
        self.token_lifetime_s = token_lifetime_s
        self.nonce_window_s = nonce_window_s
        self._clock_offset = 0.0
        self.faults = FaultInjector()
        self.rejections: list[Rejection] = []
        self.nonces: dict[tuple[int, str], tuple[float, FakeMessage]] = {}
        self.privileged_intents = privileged_intents
        self.ids = Snowflakes()
        self.attachment_size_limit = attachment_size_limit
        self.users: dict[int, FakeUser] = {}
        self.bot_user = self.add_user(bot_name, bot=True)
        self.app_owner = self.add_user("app-owner")
        self.application_id = self.bot_user.id
        self.token: str | None = bot_token(self.bot_user.id) if token is REALISTIC else token
        self.application_flags = 0
        self.guilds: list[FakeGuild] = []
        self.registered_commands: dict[int | None, list[dict[str, Any]]] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.channel_messages: list[FakeMessage] = []
        self.attachments: dict[int, FakeAttachment] = {}
        self.events = EventLog()
        self.unhandled: list[str] = []
        self.gateway = Gateway(self, heartbeat_interval_ms)
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start serving on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._middleware])
        app.add_routes([web.get("/gateway", self.gateway.handle), *RestApi(self).routes()])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Close the gateway connections and the server."""
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/v10/"):
            return await handler(request)
        fault = self.faults.take(request)
        if fault is not None:
            return await fault.serve(request, handler)
        response = await handler(request)
        if 400 <= response.status < 500 and isinstance(response, web.Response):
            try:
                body = json.loads(response.body or b"{}")  # type: ignore[arg-type]
            except (TypeError, ValueError):
                body = {}
            log.warning(
                "fake discord refused %s: %s %s",
                route_template(request),  # the template, so no interaction token is logged
                response.status,
                body.get("message"),
            )
            self.rejections.append(
                Rejection(
                    request.method,
                    request.path,
                    response.status,
                    int(body.get("code", 0)),
                    str(body.get("message", "")),
                )
            )
        return response

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The value for ``discord.http.Route.BASE``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The websocket URL (also sent as ``resume_gateway_url``)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py's REST base and gateway at this fake; restored on exit."""
        import discord.gateway
        import discord.http
        import yarl

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    @contextlib.asynccontextmanager
    async def running(self, client: Any, *, wait_until_ready: bool = True) -> AsyncIterator[Any]:
        """Log ``client`` in, connect it in a task, wait for READY; close it and reap the task on exit."""
        await client.login(self.token)
        task = asyncio.create_task(client.connect(reconnect=True), name="fake-discord-client")
        try:
            ready = asyncio.ensure_future(
                client.wait_until_ready() if wait_until_ready else self.wait_ready()
            )
            done, _ = await asyncio.wait(
                {ready, task}, timeout=15, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
                if task in done:
                    task.result()  # raises the connect error
                raise TimeoutError("client did not become ready")
            yield client
        finally:
            await client.close()
            await asyncio.wait_for(
                task, 5
            )  # re-raises what ended the connection, if not a clean close

    # -- clock, Discord's time limits and injected faults -------------------------------------

    def now(self) -> float:
        """The fake's clock (monotonic seconds, moved on by :meth:`advance_clock`)."""
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock on: interaction deadlines, token lifetimes and nonce windows pass."""
        self._clock_offset += seconds

    def expire_interaction(self, record: InteractionRecord) -> None:
        """Make ``record``'s token expired now (as if created ``token_lifetime_s`` ago)."""
        record.created_at = self.now() - self.token_lifetime_s - 1.0

    def rate_limit(
        self,
        count: int = 1,
        *,
        route: RouteMatcher = None,
        retry_after: float = 0.3,
        is_global: bool = False,
    ) -> Fault:
        """Answer the next ``count`` matching requests with 429 and ``retry_after`` (seconds).

        ``route``: ``None`` for any API route, a :class:`~.faults.Routes` string
        (``"METHOD /template"``, ``*`` for any method) or a predicate on the aiohttp request.
        The body and headers are Discord's, so discord.py sleeps ``retry_after`` and retries
        (at most 5 tries per call).
        """
        return self.faults.arm(
            Fault("rate_limit", count, route, retry_after=retry_after, is_global=is_global)
        )

    def fail(self, count: int = 1, *, status: int = 500, route: RouteMatcher = None) -> Fault:
        """Answer the next ``count`` matching requests with ``status`` (500, 502, 503 or 504).

        discord.py retries 500/502/504 itself (after 1, 3, 5... s) on bot routes and any 5xx on
        webhook routes; a 503 on a bot route raises ``DiscordServerError`` at once.
        """
        if status not in (500, 502, 503, 504):
            raise ValueError(f"status must be 500, 502, 503 or 504, got {status}")
        return self.faults.arm(Fault("status", count, route, status=status))

    def hang(self, count: int = 1, *, delay: float, route: RouteMatcher = None) -> Fault:
        """Hold the next ``count`` matching requests for ``delay`` seconds, then handle them.

        Simulates a timeout: a client that gives up first never learns whether the request
        took effect (it does, late, unless the fake stops first). The fault's ``settled``
        counts the held requests whose handling has ended, for a test to wait on.
        """
        return self.faults.arm(Fault("hang", count, route, delay=delay))

    def clear_faults(self) -> None:
        """Disarm every injected fault."""
        self.faults.clear()

    async def delete_message(self, message: FakeMessage, *, by: FakeUser | None = None) -> None:
        """Delete ``message`` as a user (a moderator) would: later edits get 404 Unknown Message."""
        message.deleted = True
        self.events.record(
            RecordedEvent(
                "user_delete_message", "DELETE", "", {"by": by.id if by else None}, [], message
            )
        )
        data = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        await self.dispatch("MESSAGE_DELETE", data)

    # -- factories -----------------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False) -> FakeUser:
        """Create a user (not yet a member of any guild)."""
        user = FakeUser(self.ids.next(), name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str = "Test Guild", *, owner: FakeUser | None = None) -> FakeGuild:
        """Create a guild with ``@everyone``, an owner and the bot as members (add before connecting)."""
        owner = owner or self.add_user(f"{name} owner")
        guild = FakeGuild(self.ids.next(), name, owner, self.ids)
        guild.roles.append(FakeRole(guild.id, guild.id, "@everyone", DEFAULT_PERMISSIONS))
        guild.add_member(owner)
        guild.add_member(self.bot_user)
        self.guilds.append(guild)
        return guild

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        *,
        description: str | None = None,
    ) -> FakeAttachment:
        """Store a file (for attachment options) served at ``{base_url}/attachments/{id}/{filename}``.

        ``description`` is Discord's alt text (``discord.Attachment.description``).
        """
        attachment = FakeAttachment(self.ids.next(), filename, data, content_type, description)
        self.attachments[attachment.id] = attachment
        return attachment

    def find_channel(self, channel_id: int) -> FakeChannel | None:
        """Any guild's channel with this id."""
        for guild in self.guilds:
            if channel := guild.channel(channel_id):
                return channel
        return None

    def apply_message_body(
        self,
        message: FakeMessage,
        payload: dict[str, Any],
        files: list[UploadedFile],
        *,
        edit: bool,
    ) -> None:
        """Apply a create/edit request body to a stored message."""
        apply_message_body(self, message, payload, files, edit=edit)

    # -- gateway -------------------------------------------------------------------------------

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the client identified and got READY + GUILD_CREATEs."""
        await self.gateway.wait_ready(timeout)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT; the client reconnects and RESUMEs (see :meth:`wait_resumed`)."""
        await self.gateway.send_reconnect()

    async def wait_resumed(self, timeout: float = 10.0) -> None:
        """Wait until the client resumed after the last :meth:`send_reconnect`."""
        await self.gateway.wait_resumed(timeout)

    async def drop_gateway(
        self, code: int | None = None, *, down_for: float = 0.0, resumable: bool = True
    ) -> None:
        """Drop the gateway connection without a RECONNECT (see :meth:`Gateway.drop`)."""
        await self.gateway.drop(code, down_for=down_for, resumable=resumable)

    def restore_gateway(self) -> None:
        """Accept gateway connections again after :meth:`drop_gateway` with ``down_for``."""
        self.gateway.restore()

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        """Send any DISPATCH event; returns its sequence number."""
        return await self.gateway.dispatch(event, data)

    # -- interactions --------------------------------------------------------------------------

    async def _send_interaction(
        self,
        type_: int,
        user: FakeUser,
        channel: FakeChannel,
        data: dict[str, Any],
        message: FakeMessage | None = None,
    ) -> InteractionRecord:
        interaction_id = self.ids.next()
        token = interaction_token(interaction_id)
        payload = payloads.interaction(
            self, interaction_id, token, type_, user, channel, data, message
        )
        record = InteractionRecord(
            id=interaction_id,
            token=token,
            type=type_,
            payload=payload,
            user=user,
            channel=channel,
            message=message,
            created_at=self.now(),
        )
        self.interactions[token] = record
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return record

    async def send_slash(
        self,
        user: FakeUser,
        channel: FakeChannel,
        command: CommandPath,
        options: Mapping[str, Any] | None = None,
    ) -> InteractionRecord:
        """Send a slash command (``"imagine"``, ``"lora use"`` or ``("lora", "use")``) as INTERACTION_CREATE."""
        data = payloads.command_data(self, channel.guild, command, options or {}, focused=None)
        return await self._send_interaction(2, user, channel, data)

    async def send_autocomplete(
        self,
        user: FakeUser,
        channel: FakeChannel,
        command: CommandPath,
        options: Mapping[str, Any],
        focused: str,
    ) -> InteractionRecord:
        """Send an autocomplete request (type 4); ``focused`` names the option being typed."""
        data = payloads.command_data(self, channel.guild, command, options, focused=focused)
        return await self._send_interaction(4, user, channel, data)

    async def send_component(
        self,
        user: FakeUser,
        message: FakeMessage,
        custom_id: str,
        *,
        component_type: int = 2,
        values: Sequence[str] | None = None,
    ) -> InteractionRecord:
        """Click a button (or pick select ``values``) on a message the bot sent (type 3)."""
        channel = self.find_channel(message.channel_id)
        if channel is None:
            raise LookupError(f"message {message.id} is not in a known channel")
        if custom_id not in message.custom_ids:
            raise LookupError(
                f"message {message.id} has no component {custom_id!r}: {message.custom_ids}"
            )
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = list(values)
        return await self._send_interaction(3, user, channel, data, message)

    async def send_modal_submit(
        self,
        user: FakeUser,
        opened_by: InteractionRecord,
        values: Mapping[str, str],
    ) -> InteractionRecord:
        """Submit the modal the bot opened in answer to ``opened_by`` (type 5), with text
        ``values`` by text-input custom id (fields not given keep their prefilled value)."""
        callback = opened_by.callback
        if callback is None or callback.type != 9:
            raise LookupError("the bot did not answer that interaction with a modal")
        modal = callback.data
        rows = []
        for row in modal.get("components") or []:
            fields_ = []
            for item in row.get("components") or []:
                value = values.get(item["custom_id"], item.get("value") or "")
                fields_.append({"type": 4, "custom_id": item["custom_id"], "value": value})
            rows.append({"type": 1, "components": fields_})
        data = {"custom_id": modal["custom_id"], "components": rows}
        return await self._send_interaction(5, user, opened_by.channel, data, opened_by.message)
