"""What every API handler reads: the services (scheduler, store, engine door) and who is calling."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import web

from engine.config import AppConfig
from engine.front_door import EngineDoor
from scheduling.jobs import JobRecord
from scheduling.scheduler import Scheduler
from storage import Storage
from webapi.settings import ApiSettings

# The one user of the queue that an API without credentials serves (every client shares it).
OPEN_API_USER = "api"
# The key of an API job's reference that holds its caller's credential name.
API_REFERENCE = "api"


@dataclass(frozen=True)
class ApiUser:
    """An API caller as the fair queue knows it: one per credential."""

    name: str
    user_id: int

    @classmethod
    def named(cls, name: str) -> ApiUser:
        """The queue user of credential ``name``."""
        return cls(name, api_user_id(name))


def api_user_id(name: str) -> int:
    """A stable queue user id for an API credential: negative, so it never equals a Discord id."""
    digest = hashlib.sha256(f"api:{name}".encode()).digest()
    return -(int.from_bytes(digest[:6], "big") + 1)


def is_api_job(job: JobRecord) -> bool:
    """Whether an HTTP API client asked for this job (webapi answers it; Discord never sees it)."""
    return API_REFERENCE in job.reference


def is_api_user(user_id: int) -> bool:
    """Whether a queue user id belongs to an API credential (Discord ids are positive)."""
    return user_id < 0


@dataclass
class ApiContext:
    """The services the API shares with the bot: one scheduler, one store, one engine."""

    scheduler: Scheduler
    storage: Storage
    door: EngineDoor
    config: AppConfig
    settings: ApiSettings


CONTEXT = web.AppKey("context", ApiContext)
USER = web.RequestKey("api_user", ApiUser)  # set by the auth middleware


def context_of(request: web.Request) -> ApiContext:
    """The API's services, from any handler."""
    return request.app[CONTEXT]


def user_of(request: web.Request) -> ApiUser:
    """The caller of this request (set by the auth middleware)."""
    return request[USER]
