"""Recording of what the bot does over REST, with awaitable helpers for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .models import FakeChannel, FakeMessage, FakeUser

DEFAULT_TIMEOUT = 5.0


@dataclass
class UploadedFile:
    """One ``files[n]`` part of a multipart request."""

    index: int
    filename: str
    data: bytes
    content_type: str | None = None


@dataclass
class RecordedEvent:
    """One request the bot made (``kind`` says which, e.g. ``"callback"`` or ``"followup"``)."""

    kind: str
    method: str
    path: str
    payload: dict[str, Any]
    files: list[UploadedFile] = field(default_factory=list)
    message: FakeMessage | None = None
    status: int = 200
    at: float = field(default_factory=time.monotonic)

    @property
    def type(self) -> int | None:
        """Interaction callback type (4, 5, 6, 7, 8, 9) for ``callback`` events."""
        return self.payload.get("type")

    @property
    def data(self) -> dict[str, Any]:
        """The message fields: ``payload['data']`` for callbacks, the payload otherwise."""
        if self.kind == "callback":
            return self.payload.get("data") or {}
        return self.payload

    @property
    def content(self) -> str | None:
        """The ``content`` field of the message data, if any."""
        return self.data.get("content")

    def file_bytes(self) -> list[bytes]:
        """The bytes of each uploaded file, in order."""
        return [f.data for f in self.files]


Predicate = Callable[[RecordedEvent], bool]


class EventLog:
    """An ordered list of events whose additions can be awaited."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self._waiters: list[tuple[Predicate, asyncio.Future[RecordedEvent]]] = []

    def record(self, event: RecordedEvent) -> None:
        """Append an event and wake up the waiters it satisfies."""
        self.events.append(event)
        for waiter in list(self._waiters):
            predicate, future = waiter
            if not future.done() and predicate(event):
                future.set_result(event)
                self._waiters.remove(waiter)

    async def wait_for(
        self, predicate: Predicate, timeout: float = DEFAULT_TIMEOUT
    ) -> RecordedEvent:
        """Return the first event (past or future) matching ``predicate``."""
        for event in self.events:
            if predicate(event):
                return event
        future: asyncio.Future[RecordedEvent] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            kinds = [(e.kind, e.type) if e.kind == "callback" else e.kind for e in self.events]
            raise TimeoutError(
                f"no matching event within {timeout}s; recorded so far: {kinds}"
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait_kind(
        self, kind: str, timeout: float = DEFAULT_TIMEOUT, *, nth: int = 0
    ) -> RecordedEvent:
        """Return the ``nth`` (0-based) event of this kind, waiting for it if needed."""

        def match(event: RecordedEvent) -> bool:
            return event.kind == kind and self.of_kind(kind).index(event) >= nth

        return await self.wait_for(match, timeout)

    def of_kind(self, kind: str) -> list[RecordedEvent]:
        """All events of this kind so far."""
        return [e for e in self.events if e.kind == kind]


class InteractionRecord(EventLog):
    """Everything the bot did in answer to one interaction sent by the fake."""

    def __init__(
        self,
        *,
        id: int,
        token: str,
        type: int,
        payload: dict[str, Any],
        user: FakeUser,
        channel: FakeChannel,
        message: FakeMessage | None = None,
        created_at: float = 0.0,
    ) -> None:
        super().__init__()
        self.created_at = (
            created_at  # on the fake's clock: the start of the deadline and token life
        )
        self.id = id
        self.token = token
        self.type = type
        self.payload = payload
        self.user = user
        self.channel = channel
        self.message = message  # the message a component was clicked on
        self.original: FakeMessage | None = None
        self.followup_messages: dict[int, FakeMessage] = {}

    @property
    def responded(self) -> bool:
        """Whether the interaction callback was received."""
        return bool(self.of_kind("callback"))

    @property
    def callback(self) -> RecordedEvent | None:
        """The interaction callback, once received."""
        callbacks = self.of_kind("callback")
        return callbacks[0] if callbacks else None

    @property
    def followups(self) -> list[RecordedEvent]:
        """Followup messages sent (POST /webhooks/{app}/{token})."""
        return self.of_kind("followup")

    @property
    def edits(self) -> list[RecordedEvent]:
        """Edits of the original response (PATCH .../messages/@original)."""
        return self.of_kind("edit_original")

    async def wait_callback(self, timeout: float = DEFAULT_TIMEOUT) -> RecordedEvent:
        """Wait for the interaction callback (POST /interactions/{id}/{token}/callback)."""
        return await self.wait_kind("callback", timeout)

    async def wait_followup(
        self, timeout: float = DEFAULT_TIMEOUT, *, nth: int = 0
    ) -> RecordedEvent:
        """Wait for the ``nth`` followup message."""
        return await self.wait_kind("followup", timeout, nth=nth)

    async def wait_edit(self, timeout: float = DEFAULT_TIMEOUT, *, nth: int = 0) -> RecordedEvent:
        """Wait for the ``nth`` edit of the original response."""
        return await self.wait_kind("edit_original", timeout, nth=nth)

    async def wait_choices(self, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """Wait for an autocomplete callback (type 8) and return its choices."""
        event = await self.wait_callback(timeout)
        if event.type != 8:
            raise AssertionError(f"expected autocomplete result (type 8), got {event.type}")
        return event.data.get("choices", [])

    def __repr__(self) -> str:
        kinds = [e.kind for e in self.events]
        return f"<InteractionRecord id={self.id} type={self.type} events={kinds}>"
