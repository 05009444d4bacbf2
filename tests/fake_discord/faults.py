"""Injected failures: 429 rate limits, 5xx answers and hung requests, for the next N matching requests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .rest import read_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteMatcher = str | Callable[[web.Request], bool] | None
API_PREFIX = "/api/v10"


class Routes:
    """Route names for the ``route=`` argument of the fault methods (``"METHOD /template"``)."""

    CALLBACK = "POST /interactions/{interaction_id}/{token}/callback"
    FOLLOWUP = "POST /webhooks/{app_id}/{token}"
    WEBHOOK_MESSAGE = "* /webhooks/{app_id}/{token}/messages/{message_id}"
    EDIT_WEBHOOK_MESSAGE = "PATCH /webhooks/{app_id}/{token}/messages/{message_id}"
    CREATE_MESSAGE = "POST /channels/{channel_id}/messages"
    CHANNEL_MESSAGE = "* /channels/{channel_id}/messages/{message_id}"
    EDIT_MESSAGE = "PATCH /channels/{channel_id}/messages/{message_id}"
    DELETE_MESSAGE = "DELETE /channels/{channel_id}/messages/{message_id}"


def route_template(request: web.Request) -> str:
    """``"METHOD /template"`` of a request, the template as in :class:`Routes` (no ``/api/v10``)."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    return f"{request.method} {canonical.removeprefix(API_PREFIX)}"


def matches(route: RouteMatcher, request: web.Request) -> bool:
    """Whether ``request`` is one of ``route`` (``None``: any API route; ``*`` as method: any)."""
    if route is None:
        return True
    if callable(route):
        return route(request)
    method, _, template = route.partition(" ")
    actual_method, _, actual_template = route_template(request).partition(" ")
    return method in ("*", actual_method) and template == actual_template


@dataclass
class Fault:
    """One armed fault: what to answer, to which requests, how many more times."""

    kind: str  # "rate_limit", "status" or "hang"
    remaining: int
    route: RouteMatcher
    status: int = 0
    retry_after: float = 0.0
    is_global: bool = False
    delay: float = 0.0
    held: int = 0  # requests a "hang" fault has begun to hold
    settled: int = 0  # held requests whose handling has ended (answered or cut off)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer ``request`` as this fault does."""
        if self.kind == "hang":
            # Received in full, then answered late and handled as usual: like a real timeout,
            # the client cannot know whether it took effect.
            try:
                await read_body(request)
                self.held += 1
                self._changed.set()
                await asyncio.sleep(self.delay)
                return await handler(request)
            finally:
                self.settled += 1
                self._changed.set()
        await request.read()  # drain the upload so the client sees the answer, not a reset
        if self.kind == "rate_limit":
            return rate_limited(request, self.retry_after, is_global=self.is_global)
        return server_error(self.status)

    async def wait_held(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests in all are (or were) held by this fault."""
        await self._wait(lambda: self.held >= count, timeout, f"{count} held requests")

    async def wait_settled(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` held requests in all have been handled (landed late or cut off)."""
        await self._wait(lambda: self.settled >= count, timeout, f"{count} settled requests")

    async def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        async def wait() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no {what} within {timeout}s") from None


def rate_limited(request: web.Request, retry_after: float, *, is_global: bool) -> web.Response:
    """Discord's 429: JSON ``retry_after`` (float seconds) and ``global``, the rate-limit headers."""
    bucket = hashlib.sha1(route_template(request).encode()).hexdigest()[:16]
    headers = {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Scope": "global" if is_global else "user",
        "Retry-After": str(math.ceil(retry_after)),
        # discord.py treats a 429 without Via as a Cloudflare ban and gives up.
        "Via": "1.1 google",
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": is_global,
    }
    if is_global:
        body["code"] = 0
    return web.Response(
        body=json.dumps(body).encode(), status=429, content_type="application/json", headers=headers
    )


def server_error(status: int) -> web.Response:
    """A 5xx as Discord's edge sends it (502 is Cloudflare's HTML page)."""
    if status == 502:
        return web.Response(
            status=502, text="<html><h1>502 Bad Gateway</h1></html>", content_type="text/html"
        )
    reason = {500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}
    body: dict[str, Any] = {"message": f"{status}: {reason.get(status, 'Server Error')}", "code": 0}
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


class FaultInjector:
    """The armed faults; the first armed fault that matches a request serves it."""

    def __init__(self) -> None:
        self.armed: list[Fault] = []
        self.served: list[tuple[str, str, str]] = []  # (fault kind, method, path) of each served

    def arm(self, fault: Fault) -> Fault:
        """Add a fault (served after those armed before it)."""
        if fault.remaining < 1:
            raise ValueError(f"a fault needs at least one request to serve, got {fault.remaining}")
        self.armed.append(fault)
        return fault

    def clear(self) -> None:
        """Disarm every fault."""
        self.armed.clear()

    def take(self, request: web.Request) -> Fault | None:
        """The fault that serves ``request``, counting it down, or ``None``."""
        for fault in self.armed:
            if matches(fault.route, request):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.armed.remove(fault)
                self.served.append((fault.kind, request.method, request.path))
                return fault
        return None
