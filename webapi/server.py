"""ApiServer: the HTTP API listening on API_HOST:API_PORT, started and stopped with its host."""

from __future__ import annotations

import logging

from aiohttp import web

from webapi.app import build_app
from webapi.context import ApiContext
from webapi.generate import watch_of
from webapi.jobs import end_orphaned_jobs
from webapi.settings import ApiSettings

log = logging.getLogger(__name__)


class ApiRefused(Exception):
    """The API may not start as configured (the message is one line for the owner)."""


def exposure_problem(settings: ApiSettings) -> str | None:
    """Why the API may not listen as configured (beyond this PC without credentials), or None."""
    if not settings.exposed_without_auth():
        return None
    return (
        f"API_HOST={settings.host} serves other machines: set API_AUTH=user:password "
        "(or --api-auth) so that strangers cannot use the queue, or use API_HOST=127.0.0.1"
    )


class ApiServer:
    """Serves the web-UI API on the context's scheduler (which must be started first)."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.app = build_app(context)
        self._runner: web.AppRunner | None = None

    async def end_orphans(self) -> int:
        """End API jobs left from before a restart; call before the scheduler starts."""
        return await end_orphaned_jobs(self.context.storage)

    async def start(self) -> None:
        """Listen (ApiRefused when exposed without credentials; OSError when the port is taken)."""
        problem = exposure_problem(self.context.settings)
        if problem is not None:
            raise ApiRefused(problem)
        settings = self.context.settings
        # handler_cancellation: a client that disconnects cancels its handler, which cancels
        # its jobs (webapi/jobs.py).
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("web-UI API on %s", self.url)

    @property
    def port(self) -> int:
        """The port listened on (the configured one; the real one when it was 0 in tests)."""
        if self._runner is not None and self._runner.addresses:
            return int(self._runner.addresses[0][1])
        return self.context.settings.port

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. http://127.0.0.1:7860."""
        host = self.context.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Answer waiting calls with 503 (their jobs are cancelled), then stop listening."""
        watch = watch_of(self.app)
        watch.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await watch.wait_settled()
