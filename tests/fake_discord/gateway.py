"""The websocket gateway: HELLO, heartbeats, IDENTIFY/READY, RESUME, RECONNECT, drops and dispatches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)  # members, presences, message content
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    0,
    1,
    2,
    6,
    7,
    9,
    10,
    11,
)


@dataclass
class GatewaySession:
    """One gateway session (survives reconnects through RESUME)."""

    id: str
    seq: int = 0
    intents: int = 0
    # Every dispatch of the session: a RESUME replays those after the client's last sequence,
    # as Discord does, so an event sent into a dying connection still arrives.
    dispatches: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class GatewayConnection:
    """One websocket connection, optionally zlib-stream compressed."""

    ws: web.WebSocketResponse
    compress: bool
    session: GatewaySession | None = None
    transport: asyncio.BaseTransport | None = field(default=None, repr=False)
    _compressor: Any = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.compress:
            self._compressor = zlib.compressobj()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one gateway message (zlib-stream frames end with a sync flush)."""
        text = json.dumps(message)
        async with self._lock:
            if self._compressor is not None:
                data = self._compressor.compress(text.encode()) + self._compressor.flush(
                    zlib.Z_SYNC_FLUSH
                )
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(text)


class Gateway:
    """Serves ``/gateway`` and pushes events to the connected client."""

    def __init__(self, fake: FakeDiscord, heartbeat_interval_ms: int = 41250) -> None:
        self.fake = fake
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewayConnection | None = None
        self.connections: list[GatewayConnection] = []
        self.compression: list[str | None] = []  # the ``compress`` query of each connection
        self.received: list[dict[str, Any]] = []  # every op the client sent
        self.sent: list[dict[str, Any]] = []  # every message sent to the client
        self.identify_count = 0
        self.resume_count = 0
        self.drops: list[int | None] = []  # the close code of each drop (None: the TCP cut)
        self.refused = 0  # connections refused while the gateway was down
        self.replayed = 0  # dispatches sent again on a RESUME
        self._resume_target = 0
        self._down_until = 0.0  # loop time until which new connections are refused
        self._live = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def sequences(self) -> list[int]:
        """Sequence numbers of all dispatches sent, in order."""
        return [m["s"] for m in self.sent if m.get("op") == DISPATCH]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Accept a gateway websocket and run its receive loop (503 while the gateway is down)."""
        if self.down:
            self.refused += 1
            await self._notify()
            # What Cloudflare answers in a gateway outage; discord.py backs off and retries.
            return web.Response(status=503, text="gateway unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.compression.append(request.query.get("compress"))
        # zlib-stream is what discord.py asks for without zstandard; anything else gets text frames,
        # which discord.py accepts whatever it asked for.
        compress = request.query.get("compress") == "zlib-stream"
        conn = GatewayConnection(ws, compress, transport=request.transport)
        self.connections.append(conn)
        try:
            await self._send(
                conn, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_message(conn, json.loads(msg.data))
                elif msg.type is WSMsgType.BINARY:
                    await self._on_message(conn, json.loads(msg.data.decode()))
        except ConnectionResetError:
            log.debug("gateway connection reset")
        finally:
            self.connections.remove(conn)
            if self.current is conn:
                self.current = None
                self._live.clear()
            await self._notify()
        return ws

    @property
    def down(self) -> bool:
        """Whether new connections are refused now (see :meth:`drop`)."""
        return asyncio.get_running_loop().time() < self._down_until

    async def _on_message(self, conn: GatewayConnection, message: dict[str, Any]) -> None:
        self.received.append(message)
        op, data = message.get("op"), message.get("d")
        if op == HEARTBEAT:
            await self._send(conn, {"op": HEARTBEAT_ACK, "d": None})
        elif op == IDENTIFY:
            await self._identify(conn, data or {})
        elif op == RESUME:
            await self._resume(conn, data or {})
        else:
            log.debug("gateway op %s ignored", op)

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        fake = self.fake
        if fake.token is not None and data.get("token") != fake.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~fake.privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = GatewaySession(secrets.token_hex(16), intents=intents)
        self.sessions[session.id] = session
        conn.session = session
        self.current = conn
        ready = {
            "v": 10,
            "user": {**fake.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "application": {"id": str(fake.application_id), "flags": fake.application_flags},
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": fake.gateway_url,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in fake.guilds],
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        await self._dispatch_on(conn, "READY", ready)
        for guild in fake.guilds:
            await self._dispatch_on(conn, "GUILD_CREATE", guild.payload())
        self.identify_count += 1
        self._live.set()
        await self._notify()

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or (
            self.fake.token is not None and data.get("token") != self.fake.token
        ):
            await self._send(conn, {"op": INVALID_SESSION, "d": False})
            return
        conn.session = session
        self.current = conn
        last = int(data.get("seq") or 0)
        for message in [m for m in session.dispatches if m["s"] > last]:
            self.replayed += 1
            await self._send(conn, message)
        await self._dispatch_on(conn, "RESUMED", {"_trace": ["fake-discord"]})
        self.resume_count += 1
        self._live.set()
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _send(self, conn: GatewayConnection, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await conn.send(message)

    async def _dispatch_on(self, conn: GatewayConnection, event: str, data: dict[str, Any]) -> int:
        session = conn.session
        assert session is not None
        session.seq += 1
        message = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.dispatches.append(message)
        try:
            await self._send(conn, message)
        except ConnectionError:
            # The connection died under the send: the client gets it on RESUME (replayed).
            log.debug("gateway %s lost with the connection; replayed on resume", event)
        return session.seq

    async def dispatch(self, event: str, data: dict[str, Any], timeout: float = 5.0) -> int:
        """Send a DISPATCH event, waiting for a live (identified or resumed) connection."""
        try:
            await asyncio.wait_for(self._live.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no live gateway connection to dispatch {event}") from None
        assert self.current is not None
        return await self._dispatch_on(self.current, event, data)

    async def send_reconnect(self) -> None:
        """Ask the client to reconnect (op 7); it will come back with RESUME."""
        if self.current is None:
            raise RuntimeError("no gateway connection")
        self._resume_target = self.resume_count + 1
        conn, self.current = self.current, None
        self._live.clear()
        await self._send(conn, {"op": RECONNECT, "d": None})

    async def drop(
        self, code: int | None = None, *, down_for: float = 0.0, resumable: bool = True
    ) -> None:
        """Drop the connection without a RECONNECT, as an outage or a network cut does.

        ``code``: ``None`` cuts the TCP connection (the client sees 1006, an abnormal closure);
        a number closes the websocket with it (4000 "unknown error": discord.py resumes).
        ``down_for``: seconds during which new connections are refused with 503
        (``math.inf``: until :meth:`restore`). ``resumable=False`` forgets the session, so a
        RESUME gets INVALID_SESSION and the client must IDENTIFY again.
        """
        conn = self.current
        if conn is None:
            raise RuntimeError("no gateway connection")
        self._resume_target = self.resume_count + 1
        self.current = None
        self._live.clear()
        self.drops.append(code)
        if down_for > 0:
            self._down_until = asyncio.get_running_loop().time() + down_for
        if not resumable and conn.session is not None:
            self.sessions.pop(conn.session.id, None)
        if code is None:
            assert conn.transport is not None
            conn.transport.abort()
        else:
            with contextlib.suppress(ConnectionError):
                await conn.ws.close(code=code, message=b"dropped by the fake")
        await self._notify()

    def restore(self) -> None:
        """End a :meth:`drop`'s outage now: the next connection attempt is accepted."""
        self._down_until = 0.0

    async def wait_refused(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` connection attempts in all were refused while down."""
        await self._wait_until(lambda: self.refused >= count, timeout, "try to reconnect")

    async def wait_live(self, timeout: float = 10.0) -> None:
        """Wait until a connection is identified or resumed (dispatches go out at once)."""
        try:
            await asyncio.wait_for(self._live.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no live gateway connection within {timeout}s") from None

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait until no connection is open (after the client process died, say)."""
        await self._wait_until(lambda: not self.connections, timeout, "disconnect")

    async def _wait_until(self, check: Any, timeout: float, what: str) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(check)

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"client did not {what} within {timeout}s") from None

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until READY and the GUILD_CREATEs were sent to an identified client."""
        await self._wait_until(lambda: self.identify_count > 0, timeout, "identify")

    async def wait_identified(self, count: int, timeout: float = 10.0) -> None:
        """Wait until the client sent ``count`` IDENTIFYs in all (a new session after a drop)."""
        await self._wait_until(lambda: self.identify_count >= count, timeout, "identify again")

    async def wait_resumed(self, timeout: float = 10.0) -> None:
        """Wait until the client resumed after the last ``send_reconnect()`` or ``drop()``."""
        await self._wait_until(lambda: self.resume_count >= self._resume_target, timeout, "resume")

    async def close(self) -> None:
        """Close every open websocket."""
        self._live.clear()
        for conn in list(self.connections):
            await conn.ws.close(code=1000)
