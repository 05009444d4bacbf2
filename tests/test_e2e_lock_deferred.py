"""Commands that defer first (/imagine with a picture, /train) meeting a lock after their defer,
and every other kind of interaction sent meanwhile.

The member is told in words that nothing was saved; once the lock ends the bot cleans up after
them (the deferral's record, a /train's reserved LoRA name), so the next start does not post a
redundant "the bot restarted, run it again" and the name can be used again. Buttons, the Region
panel and the other commands all get a first answer within Discord's 3 seconds meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from botcore import acks
from tests.e2e_harness import ephemeral, running, wait_result
from tests.test_e2e_img2img import png
from tests.test_e2e_train import train_options

BUSY = "database is busy"
BUTTONS = ("up:1:0", "vary:1:1", "reroll:1", "var:1", "seed:1", "edit:1")
COMMANDS = [
    ("history", {}),
    ("lora use", {"name": "inkwash"}),
    ("lora list", {}),
    ("settings set", {"steps": 10}),
    ("settings show", {}),
    ("seed set", {"value": 3}),
    ("seed show", {}),
    ("queue", {}),
]


async def test_deferred_commands_that_lose_to_a_lock_leave_nothing_behind(
    world, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other: sqlite3.Connection | None = None
    taking = asyncio.Lock()  # two wrapped steps may ask at once: one BEGIN only

    async def lock() -> None:
        async with taking:
            if not other.in_transaction:  # off the loop: the bot may be finishing a write
                await asyncio.to_thread(other.execute, "BEGIN EXCLUSIVE")

    def taking_the_lock(step: Any) -> Any:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = await step(*args, **kwargs)
            await lock()  # another program takes the file right after this step
            return result

        return wrapped

    async with running(world, tiny_model_dir, queue={"train_slice_steps": 2}) as bot:
        made = await world.slash(world.alice, "imagine", {"prompt": "a boat", "count": 2})
        result = (await wait_result(made)).message
        await bot.outbox.wait_idle()
        other = sqlite3.connect(
            world.tmp / "bot.sqlite3", isolation_level=None, timeout=5, check_same_thread=False
        )
        # /imagine with a picture: deferred with a record, then its job cannot be written.
        imagine = sys.modules["cogs.imagine"]  # the module discord.py loaded as the extension
        monkeypatch.setattr(imagine, "save_source", taking_the_lock(imagine.save_source))
        source = world.fake.add_attachment("photo.png", png(), "image/png")
        it = await world.slash(world.alice, "imagine", {"prompt": "a house", "image": source})
        # /train: the LoRA's name is reserved, then the job cannot be written.
        loras = bot.storage.loras
        monkeypatch.setattr(loras, "add_lora", taking_the_lock(loras.add_lora))
        train = await world.slash(world.admin, "train", train_options(world, "inkwash"))
        try:

            async def lock_met() -> None:
                while bot.storage.db.locks.since is None:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(lock_met(), 10)  # the crowd arrives under the lock
            click, slash = world.fake.send_component, world.slash
            crowd = [
                *[await click(world.alice, result, f"sd:{b}") for b in BUTTONS],
                *[await slash(world.alice, command, options) for command, options in COMMANDS],
                await slash(world.admin, "admin stats"),
            ]
            late = {}
            for record in crowd:
                answered = await record.wait_callback(timeout=10)
                data = record.payload["data"]
                late[data.get("custom_id") or data["name"]] = round(
                    answered.at - record.created_at, 2
                )
            print(f"first answers under the lock: {sorted(late.values())}")
            assert max(late.values()) < 3.0, late
            for record in (it, train):
                assert (await record.wait_callback(timeout=10)).type == 5
                said = await record.wait_followup(timeout=10)
                assert BUSY in said.data["content"] and ephemeral(said), said.data
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        await acks.settled()  # the cleanups that waited for the lock to end
        assert await bot.storage.kv.with_prefix(acks.ACK_PREFIX) == {}
        assert await loras.get_lora("inkwash") is None  # the name is free again
        jobs = await bot.storage.db.fetchall("SELECT id FROM jobs")
        assert [row["id"] for row in jobs] == [1]  # only the picture made before the lock
        # What the next start would answer: nothing, both were already answered.
        assert await acks.answer_orphaned_acks(bot, bot.storage) == 0
    assert world.fake.rejections == []
