"""POST /sdapi/v1/txt2img and /img2img: web-UI requests as fair-queue jobs, answered with PNGs."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register the generation endpoints."""
