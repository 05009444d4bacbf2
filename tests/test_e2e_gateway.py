"""Gateway drops with the real bot: delivery goes on over REST, the bot resumes, commands work."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from tests.e2e_harness import World, is_result, running, wait_result


def status_edits(record, after: float) -> list[str]:
    """Contents of the progress edits (not the result) of @original made after ``after``."""
    return [
        str(e.payload.get("content"))
        for e in record.events
        if e.kind == "edit_original" and e.at > after and not is_result(e)
    ]


async def test_jobs_deliver_through_a_gateway_outage_and_commands_work_after_resume(
    world: World, tiny_model_dir: Path
) -> None:
    fake, gateway = world.fake, world.fake.gateway
    async with running(world, tiny_model_dir):
        running_job = await world.slash(
            world.alice, "imagine", {"prompt": "a lighthouse", "steps": 40, "seed": 1}
        )
        await running_job.wait_for(lambda e: "step" in str(e.payload.get("content")), timeout=30)
        waiting_job = await world.slash(
            world.bob, "imagine", {"prompt": "a harbour", "steps": 40, "seed": 2}
        )
        await waiting_job.wait_for(lambda e: "Queued" in str(e.payload.get("content")))

        # The TCP connection is cut without a RECONNECT and the gateway stays down.
        dropped_at = time.monotonic()
        await fake.drop_gateway(None, down_for=math.inf)
        await wait_result(running_job, timeout=30)
        await wait_result(waiting_job, timeout=30)
        # Everything above reached Discord while the bot had no gateway at all.
        assert gateway.down and gateway.current is None and gateway.resume_count == 0
        assert gateway.refused >= 1  # it kept trying meanwhile
        started = status_edits(waiting_job, dropped_at)
        assert started and any("Starting" in s or "step" in s for s in started), started

        fake.restore_gateway()
        await fake.wait_resumed(timeout=30)  # discord.py backs off up to 2**n s between tries
        assert gateway.identify_count == 1 and gateway.resume_count == 1
        sent = time.monotonic()
        after = await world.slash(world.alice, "imagine", {"prompt": "a calm sea", "seed": 3})
        callback = await after.wait_callback(timeout=3)
        assert callback.type == 5 and callback.at - sent < 1.0
        await wait_result(after)
    assert fake.rejections == []  # nothing late, nothing refused


async def test_after_a_long_outage_the_bot_is_back_within_the_reconnect_cap(
    world: World, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap, scaled down: discord.py alone would wait up to 2**n s before its n-th try.
    monkeypatch.setattr("botcore.reconnect.RECONNECT_MAX_S", 0.3)
    fake, gateway = world.fake, world.fake.gateway
    async with running(world, tiny_model_dir):
        await fake.drop_gateway(None, down_for=math.inf)
        await gateway.wait_refused(6, timeout=10)  # uncapped: 1+2+4+8+16 s on average
        fake.restore_gateway()
        restored = time.monotonic()
        await fake.wait_resumed(timeout=10)
        assert time.monotonic() - restored < 2.0
        assert gateway.identify_count == 1
        after = await world.slash(world.alice, "imagine", {"prompt": "a calm sea", "seed": 3})
        assert (await after.wait_callback(timeout=3)).type == 5
