"""The web UI's read and control endpoints: progress, options, models, samplers, LoRAs, PNG info."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register the information and control endpoints."""
