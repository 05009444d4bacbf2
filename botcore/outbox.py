"""Durable delivery: a finished job's outcome reaches Discord exactly once, whatever happens.

A job's outcome (images, a failure, a cancel) is recorded before anything is sent; the job is
marked delivered only once Discord has it. Until then the outbox keeps trying: on start-up for
every undelivered job, and after every failure, with backoff on 5xx, 429 and timeouts. When the
interaction token has expired or the original message is gone, the outcome goes to the channel
as a new message that mentions the requester. Exactly once as users see it: editing the original
response is idempotent, and a new message carries a nonce with ``enforce_nonce``, so a retry
after a crash cannot post a second copy (Discord keeps nonces for a few minutes; the message id
is stored as soon as it is known, which covers the time after that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import utils
from discord.http import handle_message_parameters

from botcore.progress import JobMessenger, Update, token_fresh
from scheduling.events import Cancelled, Failed, Finished, JobEvent
from scheduling.jobs import JobRecord
from webapi.context import is_api_job

if TYPE_CHECKING:
    from storage import Storage

log = logging.getLogger(__name__)

# Builds the final message of a job from its stored record and result (called on each attempt,
# so files are fresh and never half-read by an earlier try).
FinalBuilder = Callable[[JobRecord, dict[str, Any] | None], Awaitable[Update]]

# Discord error codes that mean "that target is gone": unknown message, unknown webhook,
# unknown interaction, invalid webhook token.
_GONE_CODES = {10008, 10015, 10062, 50027}
_TRANSIENT = (discord.DiscordServerError, asyncio.TimeoutError, aiohttp.ClientError, OSError)


class Undeliverable(Exception):
    """The outcome cannot reach the user by any route; the message says why."""


class _Reroute(Exception):
    """The target of this attempt is gone; the next attempt (at once) takes the next route."""


def requester_only(job: JobRecord) -> discord.AllowedMentions:
    """Mentions that can ping the job's requester and nobody else (no @everyone, no roles)."""
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(job.user_id)], replied_user=False
    )


async def send_with_nonce(
    client: discord.Client,
    channel_id: int,
    nonce: str,
    *,
    content: str | None,
    embed: discord.Embed | None,
    files: list[discord.File],
    view: discord.ui.View | None,
    allowed_mentions: discord.AllowedMentions,
) -> int:
    """Post a message with ``nonce`` + ``enforce_nonce`` (a repeat returns the first); its id."""
    params = handle_message_parameters(
        content=content,
        embed=embed,
        files=files,
        view=view,
        nonce=nonce,
        allowed_mentions=allowed_mentions,
    )
    # discord.py 2.7 has no enforce_nonce argument; add it to the JSON that is sent.
    if params.payload is not None:
        params.payload["enforce_nonce"] = True
    else:
        body = json.loads(params.multipart[0]["value"])
        body["enforce_nonce"] = True
        params.multipart[0]["value"] = utils._to_json(body)
    try:
        data = await client.http.send_message(channel_id, params=params)
    finally:
        for file in files:
            file.close()
    return int(data["id"])


def _is_gone(exc: BaseException) -> bool:
    if isinstance(exc, discord.NotFound):
        return True
    return isinstance(exc, discord.HTTPException) and (exc.status == 401 or exc.code in _GONE_CODES)


class Outbox:
    """Delivers every finished, failed or cancelled job until Discord has it.

    ``messenger`` is told to stop a job's progress edits before its outcome is sent.
    """

    def __init__(
        self,
        client: discord.Client,
        storage: Storage,
        messenger: JobMessenger,
        *,
        upload_timeout_s: float = 120.0,
        first_backoff_s: float = 2.0,
        max_backoff_s: float = 300.0,
    ) -> None:
        self.client = client
        self.storage = storage
        self.messenger = messenger
        self.upload_timeout_s = upload_timeout_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.delivered = 0
        self.retries = 0
        self._builders: dict[str, FinalBuilder] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = False

    def register(self, kind: str, builder: FinalBuilder) -> None:
        """Use ``builder`` for the final message of jobs of this kind."""
        self._builders[kind] = builder

    @property
    def pending(self) -> int:
        """Deliveries under way (including those waiting to retry)."""
        return sum(1 for task in self._tasks.values() if not task.done())

    def on_event(self, event: JobEvent) -> None:
        """Executor listener: start delivering a job as soon as its outcome is recorded."""
        if isinstance(event, (Finished, Failed, Cancelled)) and not is_api_job(event.job):
            self.deliver(event.job.id)

    def deliver(self, job_id: int) -> None:
        """Deliver one job's outcome in the background (once; a second call joins the first)."""
        if self._stopping:
            return
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            return
        task = asyncio.create_task(self._deliver(job_id), name=f"deliver-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda t, job_id=job_id: self._done(job_id, t))

    def _done(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery of job %s stopped", job_id, exc_info=task.exception())

    async def resume(self) -> int:
        """Deliver every job left undelivered (after a restart); return how many."""
        jobs = [job for job in await self.storage.undelivered_jobs() if not is_api_job(job)]
        for job in jobs:
            self.deliver(job.id)
        if jobs:
            log.info("delivering %d result(s) left undelivered before the restart", len(jobs))
        return len(jobs)

    async def stop(self) -> None:
        """Stop delivering; what is not delivered yet is delivered after the next start."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no delivery is under way (for tests and shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError(f"{self.pending} deliveries still under way")
            await asyncio.wait(list(self._tasks.values()), timeout=left)

    # ----- one job -------------------------------------------------------------------------
    async def _deliver(self, job_id: int) -> None:
        attempt = 0
        while not self._stopping:
            delay = 0.0
            try:
                job = await self.storage.get_job(job_id)
                if job is None or job.delivered:
                    return
                builder = self._builders.get(job.kind)
                if builder is None:
                    log.warning("no delivery for job %s of kind %s", job.id, job.kind)
                    return
                result = await self.storage.jobs.get_job_result(job_id)
                await self.messenger.finalize(job.id)
                update = await builder(job, result)
                await asyncio.wait_for(self._send(job, update), self.upload_timeout_s)
                await self.storage.mark_delivered(job_id)
                self.delivered += 1
                return
            except asyncio.CancelledError:
                raise
            except Undeliverable as exc:
                log.error("job %s cannot be delivered: %s", job_id, exc)
                await self._give_up(job_id, str(exc))
                return
            except Exception as exc:
                attempt += 1
                self.retries += 1
                try:
                    delay = await self._after_failure(job_id, exc, attempt)
                except Undeliverable as final:
                    log.error("job %s cannot be delivered: %s", job_id, final)
                    await self._give_up(job_id, str(final))
                    return
                except Exception:  # e.g. the store is locked too: try again later
                    log.exception("job %s: could not handle a failed delivery", job_id)
                    delay = self._backoff(attempt)
            if delay:
                await asyncio.sleep(delay)

    async def _after_failure(self, job_id: int, exc: Exception, attempt: int) -> float:
        """Adjust the route after a failed attempt; return how long to wait before the next."""
        job = await self.storage.get_job(job_id)
        ref = dict(job.reference) if job is not None else {}
        if isinstance(exc, _Reroute):
            return 0.0 if attempt < 5 else self._backoff(attempt)
        if _is_gone(exc):
            if isinstance(exc, discord.NotFound) and exc.code == 10003 and not ref.get("dm"):
                ref["dm"] = True  # the channel itself is gone
            else:  # our earlier message is gone: post a fresh one
                ref.pop("result_message_id", None)
                ref["nonce_gen"] = int(ref.get("nonce_gen", 0)) + 1
            log.info("job %s: its channel or message is gone (%s)", job_id, exc)
            await self.storage.update_job_reference(job_id, ref)
            return 0.0 if attempt < 5 else self._backoff(attempt)
        if isinstance(exc, discord.Forbidden) and not ref.get("dm"):
            log.warning("job %s: cannot post in its channel (%s); trying a DM", job_id, exc)
            await self.storage.update_job_reference(job_id, {**ref, "dm": True})
            return 0.0
        if isinstance(exc, discord.RateLimited):
            return float(exc.retry_after)
        if isinstance(exc, discord.HTTPException) and not isinstance(
            exc, discord.DiscordServerError
        ):
            if not ref.get("text_only"):
                # Discord refused the content itself (too large, invalid form): tell the user
                # in plain text instead of retrying the same request forever.
                log.warning(
                    "job %s: Discord refused the result (%s); sending text only", job_id, exc
                )
                reason = f"Discord refused the images ({exc.status}: {exc.text[:120]})"
                await self.storage.update_job_reference(job_id, {**ref, "text_only": reason})
                return 0.0
            raise Undeliverable(str(exc)) from exc
        level = logging.WARNING if isinstance(exc, _TRANSIENT) else logging.ERROR
        log.log(
            level,
            "delivery of job %s failed (attempt %d): %r; retrying",
            job_id,
            attempt,
            exc,
            exc_info=not isinstance(exc, _TRANSIENT),
        )
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        delay = self.first_backoff_s * 2.0 ** min(attempt - 1, 12)
        return min(self.max_backoff_s, delay) * random.uniform(0.8, 1.2)

    async def _give_up(self, job_id: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.storage.jobs.set_job_error(job_id, f"undeliverable: {reason}")
        with contextlib.suppress(Exception):
            await self.storage.mark_delivered(job_id)

    async def _send(self, job: JobRecord, update: Update) -> None:
        ref = job.reference
        mentions = requester_only(job)
        if ref.get("text_only"):
            note = f"\n⚠️ {ref['text_only']}; they are kept on the bot's disk (job {job.id})."
            update = Update(
                content=(update.content or "") + note, embed=update.embed, view=update.view
            )
        kwargs: dict[str, Any] = {"content": update.content, "embed": update.embed}
        if update.view is not None:
            kwargs["view"] = update.view
        if token_fresh(ref) and not ref.get("original_gone"):
            webhook = discord.Webhook.partial(int(ref["app_id"]), ref["token"], client=self.client)
            # Discord accepts "@original" wherever a webhook message id goes.
            await self._edit_or_reroute(
                job,
                "original_gone",
                webhook.edit_message(
                    "@original",  # type: ignore[arg-type]
                    attachments=update.files,
                    allowed_mentions=mentions,
                    **kwargs,
                ),
            )
            return
        if ref.get("result_message_id"):
            return  # posted before a crash or a lost reply; the stored id proves it
        channel_id = ref.get("channel_id") or job.channel_id
        status_id = ref.get("message_id")
        if status_id and channel_id and not update.notify and not ref.get("status_gone"):
            channel = self.client.get_partial_messageable(int(channel_id))
            message = channel.get_partial_message(int(status_id))
            await self._edit_or_reroute(
                job,
                "status_gone",
                message.edit(attachments=update.files, allowed_mentions=mentions, **kwargs),
            )
            return
        content = update.content or ""
        mention = f"<@{job.user_id}>"
        if not content.startswith(mention):
            content = f"{mention} {content}".strip()
        if ref.get("dm"):
            user = await self.client.fetch_user(job.user_id)
            try:
                message = await user.send(
                    content=content[:2000], embed=update.embed, files=update.files
                )
            except discord.HTTPException as exc:
                raise Undeliverable(f"no channel or DM accepts it ({exc})") from exc
            await self._remember(job, message.id)
            return
        if not channel_id:
            raise Undeliverable("the job has no channel to post in")
        message_id = await send_with_nonce(
            self.client,
            int(channel_id),
            f"sd{job.id}n{int(ref.get('nonce_gen', 0))}",
            content=content[:2000],
            embed=update.embed,
            files=update.files,
            view=update.view,
            allowed_mentions=mentions,
        )
        await self._remember(job, message_id)

    async def _edit_or_reroute(self, job: JobRecord, gone_flag: str, edit: Awaitable[Any]) -> None:
        """Run an idempotent edit; if its message or token is gone, flag it and reroute."""
        try:
            await edit
        except discord.HTTPException as exc:
            if not _is_gone(exc):
                raise
            log.info("job %s: its message is gone (%s); posting a new one", job.id, exc)
            job.reference = {**job.reference, gone_flag: True}
            await self.storage.update_job_reference(job.id, job.reference)
            raise _Reroute from exc

    async def _remember(self, job: JobRecord, message_id: int) -> None:
        job.reference = {**job.reference, "result_message_id": message_id}
        await self.storage.update_job_reference(job.id, job.reference)
