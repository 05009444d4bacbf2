"""The aiohttp application: credentials, error shapes, and the routes of each endpoint module."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from webapi import extras, generate, info
from webapi.context import CONTEXT, OPEN_API_USER, USER, ApiContext, ApiUser
from webapi.errors import http_error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REALM = 'Basic realm="sd-discord-bot API"'


def _caller(request: web.Request, credentials: dict[str, str]) -> ApiUser:
    """The ApiUser of a request, or 401 when credentials are required and wrong or missing."""
    if not credentials:
        return ApiUser.named(OPEN_API_USER)
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raw = b""
        try:
            text = raw.decode()
        except UnicodeDecodeError:  # Python requests sends non-ASCII credentials as latin-1
            text = raw.decode("latin-1")
        name, _, password = text.partition(":")
        expected = credentials.get(name)
        # compare_digest on every attempt, so timing does not tell which user names exist
        if hmac.compare_digest(password.encode(), (expected or "\0").encode()) and expected:
            return ApiUser.named(name)
    raise http_error(
        401,
        "Wrong or missing credentials (HTTP Basic, see API_AUTH)",
        headers={"WWW-Authenticate": REALM},
    )


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[USER] = _caller(request, request.app[CONTEXT].settings.credentials())
    return await handler(request)


def build_app(context: ApiContext) -> web.Application:
    """The API application on ``context``'s services (served by webapi.server)."""
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024 * 1024)
    app[CONTEXT] = context
    generate.add_routes(app)
    info.add_routes(app)
    extras.add_routes(app)
    return app
