"""Errors in the shapes web-UI clients read: 422 with FastAPI's ``detail`` list, others in words."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

_BY_STATUS: dict[int, type[web.HTTPError]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    413: web.HTTPRequestEntityTooLarge,
    422: web.HTTPUnprocessableEntity,
    429: web.HTTPTooManyRequests,
    500: web.HTTPInternalServerError,
    503: web.HTTPServiceUnavailable,
    507: web.HTTPInsufficientStorage,
}


def invalid(field: str, message: str) -> web.HTTPUnprocessableEntity:
    """422 naming the request field that is wrong (FastAPI's validation-error shape)."""
    body = {
        "detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}],
        "error": "ValidationError",
        "errors": f"{field}: {message}",
    }
    return web.HTTPUnprocessableEntity(text=json.dumps(body), content_type="application/json")


def http_error(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.HTTPError:
    """An error answer in words, with ``detail`` and ``error`` as the web UI sends them."""
    cls = _BY_STATUS[status]
    body = json.dumps({"detail": message, "error": cls.__name__, "errors": message})
    return cls(text=body, content_type="application/json", headers=headers)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 422 naming ``body`` when it is not one."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise invalid("body", "is not JSON") from None
    except RecursionError:  # thousands of nested brackets
        raise invalid("body", "is nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return body
