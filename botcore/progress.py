"""Job status in Discord while a job waits or runs: throttled edits, token expiry, restart-safe.

Progress is best effort (a lost edit is replaced by the next one); the final outcome goes
through the durable outbox (botcore/outbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from scheduling.jobs import JobRecord

if TYPE_CHECKING:
    from storage import Storage

log = logging.getLogger(__name__)

# Interaction tokens last 15 minutes; stop using one a little before that.
TOKEN_LIFETIME_S = 14 * 60
PROGRESS_TIMEOUT_S = 30.0


def token_fresh(reference: dict[str, Any]) -> bool:
    """Whether a job's interaction token can still be used to edit its reply."""
    age = time.time() - float(reference.get("created", 0))
    return bool(reference.get("token")) and age < TOKEN_LIFETIME_S


def interaction_reference(interaction: discord.Interaction) -> dict[str, Any]:
    """What a job needs to reach its user later, even after a restart."""
    return {
        "app_id": interaction.application_id,
        "token": interaction.token,
        # Our own clock, not the snowflake's: the 15 minutes run from when we received it.
        "created": time.time(),
        "channel_id": interaction.channel_id,
        "nsfw_channel": bool(getattr(interaction.channel, "is_nsfw", lambda: False)()),
    }


@dataclass
class Update:
    """One version of a job's message: text, embed, files and buttons."""

    content: str | None = None
    embed: discord.Embed | None = None
    files: list[discord.File] = field(default_factory=list)
    view: discord.ui.View | None = None
    # For a final message that cannot go in the original response: post a new message that
    # pings the requester, rather than editing the status message in the channel.
    notify: bool = False


@dataclass
class _State:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last: float = 0.0
    final: bool = False
    pending: Update | None = None
    flush: asyncio.Task[None] | None = None


_CLOSED_KEEP = 10_000  # finished job ids remembered, so a late progress edit is dropped


class JobMessenger:
    """Edits each job's status message at most every `interval` seconds until it is finalized."""

    def __init__(self, client: discord.Client, storage: Storage, interval: float) -> None:
        self.client = client
        self.storage = storage
        self.interval = interval
        self._states: dict[int, _State] = {}
        self._closed: OrderedDict[int, None] = OrderedDict()

    def _state(self, job_id: int) -> _State:
        return self._states.setdefault(job_id, _State())

    async def update(self, job: JobRecord, update: Update, interval: float | None = None) -> None:
        """A progress update: shown now, or coalesced with later ones within the interval."""
        if job.id in self._closed:
            return
        state = self._state(job.id)
        if state.final:
            return
        wait = (self.interval if interval is None else interval) - (time.monotonic() - state.last)
        if wait > 0:
            state.pending = update
            if state.flush is None or state.flush.done():
                state.flush = asyncio.create_task(self._flush_later(job, state, wait))
            return
        # This one is newer than any update still kept for a flush that is due but has not run
        # yet (a busy loop): drop that one, or it would land after this one and replace it.
        state.pending = None
        await self._send(job, state, update)

    async def _flush_later(self, job: JobRecord, state: _State, delay: float) -> None:
        await asyncio.sleep(delay)
        # Awake, it is an edit like any other: finalize waits for it and never cancels it.
        state.flush = None
        update, state.pending = state.pending, None
        if update is not None and not state.final:
            await self._send(job, state, update)

    async def finalize(self, job_id: int) -> None:
        """No more progress edits for this job (its outcome is being delivered)."""
        self._closed[job_id] = None
        while len(self._closed) > _CLOSED_KEEP:
            self._closed.popitem(last=False)
        state = self._states.get(job_id)
        if state is None:
            return
        state.final = True
        state.pending = None
        if state.flush is not None and not state.flush.done():  # still asleep: nothing sent
            state.flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.flush
        # Let an edit in flight land before the outcome: one cancelled on its way may still
        # reach Discord, after the outcome, and replace it (its text, no images).
        async with state.lock:
            self._states.pop(job_id, None)

    async def _send(self, job: JobRecord, state: _State, update: Update) -> None:
        async with state.lock:
            if state.final:  # finalized while this edit waited: the outcome comes next
                return
            state.last = time.monotonic()
            try:
                # A hung edit must not hold the lock that the final delivery waits for.
                await asyncio.wait_for(self._deliver(job, update), PROGRESS_TIMEOUT_S)
            except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("could not update the message of job %s: %r", job.id, exc)

    async def _deliver(self, job: JobRecord, update: Update) -> None:
        ref = job.reference
        kwargs: dict[str, Any] = {
            "content": update.content,
            "embed": update.embed,
            "allowed_mentions": discord.AllowedMentions.none(),
        }
        if update.view is not None:
            kwargs["view"] = update.view
        if token_fresh(ref):
            webhook = discord.Webhook.partial(int(ref["app_id"]), ref["token"], client=self.client)
            # Discord accepts "@original" wherever a webhook message id goes.
            await webhook.edit_message("@original", attachments=update.files, **kwargs)  # type: ignore[arg-type]
            return
        channel_id = ref.get("channel_id") or job.channel_id
        if not channel_id:
            log.warning("job %s has no channel to report to", job.id)
            return
        channel = self.client.get_partial_messageable(int(channel_id))
        message_id = ref.get("message_id")
        if message_id:
            await channel.get_partial_message(int(message_id)).edit(
                attachments=update.files, **kwargs
            )
            return
        # A status message of its own (the token expired, e.g. after a restart); it names the
        # requester without pinging: the result message will ping.
        kwargs["content"] = f"<@{job.user_id}> {update.content or ''}".strip()
        message = await channel.send(files=update.files, **kwargs)
        job.reference = {**ref, "message_id": message.id}
        await self.storage.update_job_reference(job.id, job.reference)
