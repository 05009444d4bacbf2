"""The web-UI API in this process on the tiny model: real SQLite, real scheduler, real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from engine.front_door import EngineDoor
from scheduling.events import JobEvent
from scheduling.executor import build_scheduler
from scheduling.scheduler import Scheduler
from storage import Storage, StorageSettings
from webapi.context import ApiContext
from webapi.server import ApiServer
from webapi.settings import ApiSettings


@dataclass
class Served:
    """A running API: its server, scheduler, store, base URL and every job event seen."""

    server: ApiServer
    scheduler: Scheduler
    storage: Storage
    url: str
    events: list[JobEvent] = field(default_factory=list)
    _waiters: list[tuple[Any, asyncio.Future[JobEvent]]] = field(default_factory=list)

    def on_event(self, event: JobEvent) -> None:
        """Record an event and wake whoever waits for one like it."""
        self.events.append(event)
        for item in list(self._waiters):
            match, future = item
            if match(event) and not future.done():
                future.set_result(event)
                self._waiters.remove(item)

    async def settled(self) -> None:
        """Wait until every ended call's jobs are marked delivered or cancelled."""
        from webapi.generate import watch_of

        await watch_of(self.server.app).wait_settled()

    async def wait_for(self, match: Any, timeout: float = 30) -> JobEvent:
        """The first event from now on (or already seen) for which match(event) is true."""
        for event in self.events:
            if match(event):
                return event
        future: asyncio.Future[JobEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((match, future))
        return await asyncio.wait_for(future, timeout)


@contextlib.asynccontextmanager
async def serving(
    generator: Any,
    tmp: Path,
    *,
    queue: dict[str, Any] | None = None,
    min_free_mb: int = 0,
    **api: Any,
) -> AsyncIterator[Served]:
    """Serve the API on a free port of 127.0.0.1 on `generator` until the block ends."""
    settings = StorageSettings(
        db_path=tmp / "api.sqlite3",
        outputs_dir=tmp / "outputs",
        lora_dir=tmp / "loras",
        embedding_dir=tmp / "embeddings",
        min_free_mb=min_free_mb,
    )
    storage = await Storage.open(settings.db_path, settings=settings)
    config = generator.config
    queue_config = config.queue.model_copy(update={"progress_interval_s": 0.05, **(queue or {})})
    scheduler = build_scheduler(
        generator,
        storage,
        queue_config,
        image_path=lambda job, index: storage.files.image_path(job.id, index),
        deliver=True,
        space=storage.space,
    )
    scheduler.close_workers = False  # the module's generator outlives this server
    door = EngineDoor(generator, scheduler.run_on_engine)
    api_settings = ApiSettings(**{"port": 1, **api}).model_copy(update={"port": 0})
    server = ApiServer(ApiContext(scheduler, storage, door, config, api_settings))
    await server.end_orphans()
    await scheduler.start()
    served = Served(server, scheduler, storage, "")
    scheduler.subscribe(served.on_event)
    await server.start()
    served.url = server.url
    try:
        yield served
    finally:
        await server.stop()
        await scheduler.stop()
        await storage.close()


def png_b64(color: str = "red", size: tuple[int, int] = (64, 64)) -> str:
    """A plain PNG as base64."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_of(text: str) -> Image.Image:
    """An answer's base64 PNG, opened."""
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


async def post(
    session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any], **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    """POST JSON; (status, headers, parsed JSON body)."""
    async with session.post(url + path, json=body, **kwargs) as response:
        return response.status, dict(response.headers), await response.json()
