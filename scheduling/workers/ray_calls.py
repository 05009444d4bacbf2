"""Awaiting a Ray actor call on the event loop, and the errors that mean the actor is gone."""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError

LOST = (RayActorError, ActorUnavailableError)


async def get(ref: Any, timeout: float | None = None) -> Any:
    """Await a Ray object ref on the event loop (with an optional timeout)."""
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
