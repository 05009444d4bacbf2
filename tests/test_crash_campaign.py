"""Crash campaign: the real bot in a child process, SIGKILLed in each window where a command
or a result used to be lost; after each restart nothing is lost and nothing is shown twice.

Windows: right after the acknowledgement ("thinking…"), right after the job's 'finished'
commit (result on disk, not on Discord), and during the result upload (the request reached
Discord, the bot died before the answer), the last one both on the interaction token and on
the channel fallback (expired token), where only the nonce keeps the retry from a second post.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from tests.bot_process import BotProcess
from tests.e2e_harness import World, answer
from tests.fake_discord import Routes

pytestmark = pytest.mark.slow


@pytest.fixture
async def child(world: World, tiny_model_dir: Path):
    """The bot's child process; killed at teardown whatever happened (a timeout included)."""
    bot = BotProcess(world.fake, world.guild.id, world.tmp / "crash", tiny_model_dir)
    yield bot
    await bot.close()


def job_rows(db: Path) -> dict[str, tuple[int, str, bool]]:
    """prompt -> (job id, status, delivered), read beside the running bot (WAL)."""
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute("SELECT id, status, delivered_at, payload FROM jobs").fetchall()
    return {
        json.loads(payload)["request"]["prompt"]: (job_id, status, delivered is not None)
        for job_id, status, delivered, payload in rows
    }


async def wait_for(predicate, timeout: float = 120.0, every: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not met in time")


def rows_id(db: Path) -> int:
    """Id of the first job."""
    return min(job_id for job_id, _, _ in job_rows(db).values())


def visible_results(world: World, records: list, job_id: int) -> int:
    """How many messages people can see carrying this job's images."""
    messages = [r.original for r in records if r.original is not None]
    messages += world.fake.channel_messages
    seen = {
        id(m)
        for m in messages
        if not m.deleted and any(a.filename.startswith(f"job{job_id}-") for a in m.attachments)
    }
    return len(seen)


def is_result_upload(request) -> bool:
    """The multipart PATCH or POST that carries a result (previews are off in the child)."""
    return request.content_type.startswith("multipart/") and request.method in ("PATCH", "POST")


@pytest.mark.timeout(600)  # about 60 s alone; five child starts are slow on a loaded machine
async def test_sigkill_in_every_window_loses_nothing_and_shows_nothing_twice(
    world: World, child: BotProcess
) -> None:
    db = child.data / "bot.sqlite3"
    bot = child
    records = []
    prompts: list[str] = []
    await bot.start()

    async def imagine(prompt: str):
        prompts.append(prompt)
        it = await world.slash(world.alice, "imagine", {"prompt": prompt, "seed": len(prompts)})
        records.append(it)
        return it

    # 1. Killed right after the acknowledgement: the job was written before the defer.
    it = await imagine("acked castle")
    assert (await it.wait_callback(timeout=30)).type == 5
    await bot.kill()
    await bot.start()

    def all_delivered() -> bool:
        return all(row[2] for row in job_rows(db).values())

    # 2. Killed right after the 'finished' commit, before the upload could land. (Earlier jobs
    # are delivered first, so the held upload is this job's.)
    await wait_for(all_delivered)
    held = [world.fake.hang(1, delay=3.0, route=is_result_upload)]
    await imagine("finished castle")
    await wait_for(lambda: job_rows(db).get("finished castle", (0, ""))[1] == "finished")
    await bot.kill()
    await bot.start()

    # 3a. Killed during the upload on the interaction token: the request reached Discord.
    await wait_for(all_delivered)
    upload = world.fake.hang(1, delay=2.0, route=is_result_upload)
    held.append(upload)
    await imagine("uploading castle")
    await wait_for(lambda: upload.remaining == 0)
    await bot.kill()
    await bot.start()

    # 3b. The same on the channel fallback (token refused): only the nonce prevents a repeat.
    await wait_for(all_delivered)
    assert "paused" in (await answer(await world.slash(world.admin, "admin pause"))).content
    late = await imagine("late castle")
    await late.wait_for(lambda e: "Queued" in str(e.payload.get("content")))
    world.fake.expire_interaction(late)
    post = world.fake.hang(1, delay=2.0, route=Routes.CREATE_MESSAGE)
    held.append(post)
    await answer(await world.slash(world.admin, "admin resume"))
    await wait_for(lambda: post.remaining == 0)
    await bot.kill()
    await bot.start()

    try:
        await wait_for(all_delivered, timeout=180)
        await wait_for(lambda: all(fault.settled == 1 for fault in held))  # each landed late
        # A button on a result from before the restarts still works.
        first = records[0].original
        click = await world.fake.send_component(world.alice, first, f"sd:seed:{rows_id(db)}")
        reply = await click.wait_callback(timeout=30)
        assert "fixed seed" in reply.data["content"]
    finally:
        await bot.kill()
    rows = job_rows(db)
    assert sorted(rows) == sorted(prompts)
    lost = [p for p, (job_id, status, done) in rows.items() if status != "done" or not done]
    shown = {p: visible_results(world, records, rows[p][0]) for p in prompts}
    duplicated = sum(count - 1 for count in shown.values() if count > 1)
    print(
        f"\ncrash campaign: {len(prompts)} jobs, 4 SIGKILLs, "
        f"delivered {len(prompts) - len(lost)}, duplicated {duplicated}, lost {len(lost)}"
    )
    assert lost == [], f"lost: {lost}"
    assert all(count == 1 for count in shown.values()), f"visible copies per job: {shown}"
