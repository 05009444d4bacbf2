"""The bot with API_ENABLED: an HTTP client and a Discord member share one fair queue."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from scheduling.events import JobEvent, Queued, Started
from tests.e2e_harness import answer as first_answer
from tests.e2e_harness import running, text_of, wait_result
from webapi.generate import watch_of
from webapi.settings import ApiSettings


async def test_a_discord_member_is_not_held_back_by_an_api_client(world, tiny_model_dir) -> None:
    api = ApiSettings(enabled=True).model_copy(update={"port": 0})  # a free port
    async with running(world, tiny_model_dir, api=api) as bot:
        assert bot.api is not None
        queued: dict[int, set[int]] = {}
        started: list[JobEvent] = []
        changed = asyncio.Event()

        def watch(event: JobEvent) -> None:
            if isinstance(event, Queued):
                queued.setdefault(event.job.user_id, set()).add(event.job.id)
            if isinstance(event, Started):
                started.append(event)
            changed.set()

        async def until(check) -> None:
            while not check():
                changed.clear()
                await asyncio.wait_for(changed.wait(), 30)

        bot.executor.subscribe(watch)
        bot.executor.pause()
        async with aiohttp.ClientSession() as http:
            body = {"prompt": "a red circle", "n_iter": 6, "seed": 1}
            call = asyncio.create_task(http.post(bot.api.url + "/sdapi/v1/txt2img", json=body))
            # The API user's first 3 jobs wait (QUEUE_PER_USER_CAP), the rest join later.
            await until(lambda: sum(len(ids) for ids in queued.values()) >= 3)
            it = await world.slash(world.alice, "imagine", {"prompt": "a blue square"})
            await until(lambda: world.alice.id in queued)
            shown = text_of(await first_answer(await world.slash(world.bob, "queue")))
            assert "API client `api`" in shown and "<@-" not in shown, shown
            bot.executor.resume()
            response = await call
            answer = await response.json()
            assert response.status == 200, answer
        assert len(answer["images"]) == 6 and json.loads(answer["info"])["n_iter"] == 6
        result = await wait_result(it)
        assert result.data.get("attachments") or result.files
        order = [event.job.user_id for event in started]
        # Fair order: alice's one job runs second, before five of the API client's six.
        assert order.index(world.alice.id) <= 1, order
        await watch_of(bot.api.app).wait_settled()
        api_jobs = [e.job for e in started if e.job.user_id != world.alice.id]
        for job in api_jobs:  # answered over HTTP, never posted to Discord
            stored = await bot.storage.get_job(job.id)
            assert stored.delivered and "api" in stored.reference
        await bot.outbox.wait_idle()
        assert bot.outbox.delivered == 1
