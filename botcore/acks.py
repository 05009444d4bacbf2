"""Acknowledged commands are never left "thinking…": a record before every early defer.

Commands that must defer before they can write their job (``/train`` downloads its images
first) record the interaction before deferring and forget it once they have answered. A crash
in between leaves the record, and the next start answers the interaction with a clear message.
(``/imagine`` needs none of this: it writes its job before it defers.)

A clean-up that meets a locked database past the command's answer budget runs again in a task
of its own that waits the lock out (``later``): the member was already told in words, so the
next start must not answer the interaction a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from botcore.progress import interaction_reference, token_fresh
from storage.errors import DatabaseLockedError

if TYPE_CHECKING:
    from storage import Storage

log = logging.getLogger(__name__)
_later: set[asyncio.Task[None]] = set()

ACK_PREFIX = "ack:"
RESTARTED = (
    "⚠️ The bot restarted before your `/{command}` was queued; nothing was saved. "
    "Please run it again."
)


class AckRecord:
    """The stored record of one deferred interaction; ``forget`` once its job is written."""

    def __init__(self, storage: Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.forgotten = False

    async def forget(self) -> None:
        """The command's own record (its job) exists now, or it has answered: drop this one."""
        if self.forgotten:
            return
        try:
            await later(lambda: self.storage.kv.delete(self.key), f"forget {self.key}")
            self.forgotten = True
        except Exception:
            log.exception("could not forget the acknowledgement %s", self.key)


async def later(write: Callable[[], Awaitable[object]], what: str) -> None:
    """Run a clean-up write now or, if a locked database outlasts the answer budget, in a task
    of its own that waits the lock out (tasks started by a command's task have no budget)."""
    try:
        await write()
    except DatabaseLockedError:
        log.info("the database is locked: %s waits for the lock to end", what)
        task = asyncio.ensure_future(_patiently(write, what))
        _later.add(task)
        task.add_done_callback(_later.discard)


async def _patiently(write: Callable[[], Awaitable[object]], what: str) -> None:
    try:
        await write()
    except Exception:
        log.exception("could not %s", what)


async def settled() -> None:
    """Wait for the clean-ups left waiting for a database lock to end."""
    await asyncio.gather(*_later, return_exceptions=True)


@contextlib.asynccontextmanager
async def recorded_defer(
    storage: Storage, interaction: discord.Interaction, *, ephemeral: bool = False
) -> AsyncIterator[AckRecord]:
    """Record the interaction, defer it, and forget the record when the block is left.

    Call ``forget()`` as soon as the job is written, so a crash after that is not answered as
    "not queued". Leaving the block by an exception also forgets it: the error handler answers.
    """
    key = f"{ACK_PREFIX}{interaction.id}"
    command = interaction.command.qualified_name if interaction.command else "command"
    record = {**interaction_reference(interaction), "user_id": interaction.user.id}
    record["command"] = command
    await storage.kv.set(key, record)
    ack = AckRecord(storage, key)
    try:
        await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        yield ack
    finally:
        await ack.forget()


async def answer_orphaned_acks(client: discord.Client, storage: Storage) -> int:
    """Answer every interaction acknowledged before a crash and never queued; return how many."""
    records = await storage.kv.with_prefix(ACK_PREFIX)
    for key, record in records.items():
        try:
            await _answer(client, record)
        except discord.HTTPException as exc:
            log.warning("could not answer interaction %s after the restart: %s", key, exc)
        await storage.kv.delete(key)
    if records:
        log.info("answered %d command(s) acknowledged before the restart", len(records))
    return len(records)


async def _answer(client: discord.Client, record: dict[str, Any]) -> None:
    text = RESTARTED.format(command=record.get("command", "command"))
    if token_fresh(record):
        webhook = discord.Webhook.partial(int(record["app_id"]), record["token"], client=client)
        await webhook.edit_message("@original", content=text)  # type: ignore[arg-type]
        return
    if not record.get("channel_id"):
        return
    channel = client.get_partial_messageable(int(record["channel_id"]))
    user = int(record["user_id"])
    await channel.send(
        f"<@{user}> {text}", allowed_mentions=discord.AllowedMentions(users=[discord.Object(user)])
    )
