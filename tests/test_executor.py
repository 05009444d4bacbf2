"""The fair queue and the engine executor on the tiny model: order, caps, cancel, OOM, events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
import torch

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from engine.requests import GenerationRequest
from scheduling.events import (
    Cancelled,
    Failed,
    Finished,
    JobEvent,
    Notice,
    Progress,
    Queued,
    Started,
)
from scheduling.executor import build_scheduler
from scheduling.jobs import MemoryJobStore, NewJob, TrainSpec
from scheduling.queue import FairQueue, QueueFullError
from scheduling.scheduler import Scheduler
from scheduling.workers.local import LocalWorker


def request(prompt: str = "a red castle", **extra: object) -> GenerationRequest:
    return GenerationRequest(prompt, **{"seed": 1, **extra})  # type: ignore[arg-type]


def local(scheduler: Scheduler) -> LocalWorker:
    """The scheduler's one local worker (build_scheduler made it)."""
    worker = scheduler.workers[0]
    assert isinstance(worker, LocalWorker)
    return worker


class Recorder:
    """Collects events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: JobEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type, job_id: int | None = None) -> list:
        return [e for e in self.events if isinstance(e, kind) and job_id in (None, e.job.id)]

    async def wait(
        self, kind: type, job_id: int | None = None, count: int = 1, timeout: float = 60
    ):
        deadline = time.monotonic() + timeout
        while len(self.of(kind, job_id)) < count:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(type(e).__name__, e.job.id) for e in self.events]
                raise AssertionError(f"no {kind.__name__} for job {job_id}; events: {seen}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.of(kind, job_id)


@pytest.fixture
async def executor(tiny_generator: TextToImageGenerator, tmp_path: Path):
    store = MemoryJobStore()
    ex = build_scheduler(
        tiny_generator,
        store,
        QueueConfig(progress_interval_s=0, per_user_cap=3, global_cap=8),
        image_path=lambda job, i: tmp_path / f"job{job.id}-{i}.png",
    )
    rec = Recorder()
    ex.subscribe(rec)
    ex.rec = rec  # type: ignore[attr-defined]
    await ex.start()
    yield ex
    await ex.stop()


async def test_round_robin_across_three_users(executor: Scheduler) -> None:
    executor.pause()
    ids = {}
    for user, count in ((1, 3), (2, 2), (3, 1)):
        for n in range(count):
            job = await executor.submit(NewJob(user_id=user, work=request(f"job {user}-{n}")))
            ids[job.id] = user
    positions = [executor.position(job_id) for job_id in ids]
    assert sorted(positions) == [1, 2, 3, 4, 5, 6]
    executor.resume()
    await executor.rec.wait(Finished, count=6)
    started = [ids[e.job.id] for e in executor.rec.of(Started)]
    assert started == [1, 2, 3, 1, 2, 1]


async def test_caps_refuse_with_a_reason(executor: Scheduler) -> None:
    executor.pause()
    for _ in range(3):
        await executor.submit(NewJob(user_id=5, work=request()))
    with pytest.raises(QueueFullError, match="already have 3 jobs waiting"):
        await executor.submit(NewJob(user_id=5, work=request()))
    for user in range(6, 11):
        await executor.submit(NewJob(user_id=user, work=request()))
    with pytest.raises(QueueFullError, match="queue is full"):
        await executor.submit(NewJob(user_id=99, work=request()))
    # Admins are not capped.
    await executor.submit(NewJob(user_id=99, work=request()), admin=True)
    assert len(executor.queue) == 9


async def test_bad_request_refused_before_queueing(executor: Scheduler) -> None:
    with pytest.raises(ValueError, match="width: must be a multiple of 8"):
        await executor.submit(NewJob(user_id=1, work=request(width=99)))
    assert len(executor.queue) == 0 and executor.store.jobs == {}


async def test_cancel_queued_and_running(executor: Scheduler) -> None:
    executor.pause()
    slow = await executor.submit(NewJob(user_id=1, work=request(num_inference_steps=150)))
    waiting = await executor.submit(NewJob(user_id=2, work=request()))
    assert await executor.cancel(waiting.id) == "queued"
    assert executor.position(waiting.id) is None
    assert executor.store.jobs[waiting.id].status == "cancelled"
    executor.resume()
    await executor.rec.wait(Progress, slow.id)
    assert await executor.cancel(slow.id) == "running"
    [cancelled] = await executor.rec.wait(Cancelled, slow.id)
    assert cancelled.was_running and 1 <= cancelled.step < 150
    assert executor.store.jobs[slow.id].status == "cancelled"
    assert await executor.cancel(12345) is None


async def test_progress_events_are_throttled(
    tiny_generator: TextToImageGenerator, tmp_path: Path
) -> None:
    results = {}
    for interval in (0.0, 30.0):
        ex = build_scheduler(
            tiny_generator,
            MemoryJobStore(),
            QueueConfig(progress_interval_s=interval),
            image_path=lambda job, i, tag=interval: tmp_path / f"{tag}-{job.id}-{i}.png",
        )
        rec = Recorder()
        ex.subscribe(rec)
        await ex.start()
        job = await ex.submit(NewJob(user_id=1, work=request(num_inference_steps=8)))
        await rec.wait(Finished, job.id)
        await ex.stop()
        results[interval] = rec.of(Progress, job.id)
    assert [p.step for p in results[0.0]] == list(range(1, 9))
    assert results[0.0][0].preview is not None and results[0.0][0].preview.size[0] <= 128
    # With a long interval only the first step and the last one get through.
    assert [p.step for p in results[30.0]] == [1, 8]


async def test_finished_event_has_files_and_seeds(executor: Scheduler) -> None:
    job = await executor.submit(NewJob(user_id=1, work=request(num_images=2, seed=500)))
    [done] = await executor.rec.wait(Finished, job.id)
    assert done.result_data["seeds"] == [500, 501]
    for path in done.result_data["paths"]:
        assert Path(path).is_file() and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert executor.store.jobs[job.id].status == "done"
    assert executor.store.results[job.id]["seeds"] == [500, 501]
    queued = executor.rec.of(Queued, job.id)
    assert queued and queued[0].position == 1


async def test_missing_seed_is_fixed_at_submit(executor: Scheduler) -> None:
    job = await executor.submit(
        NewJob(user_id=1, work=GenerationRequest.from_dict({"prompt": "a tree"}))
    )
    seed = job.request.seed
    assert isinstance(seed, int)
    [done] = await executor.rec.wait(Finished, job.id)
    assert done.result_data["seeds"] == [seed]


async def test_oom_ladder_steps_down_and_remembers(executor: Scheduler) -> None:
    seen: list[int] = []

    def inject(level: int) -> None:
        seen.append(level)
        if level < 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    local(executor).core.fault_injector = inject
    job = await executor.submit(NewJob(user_id=1, work=request()))
    [done] = await executor.rec.wait(Finished, job.id)
    assert seen == [0, 1, 2] and done.result_data["memory_level"] == 2
    notices = [n.message for n in executor.rec.of(Notice, job.id)]
    rungs = local(executor).generator.memory_rungs
    assert len(notices) == 2 and rungs[0] in notices[0] and rungs[1] in notices[1]
    seen.clear()
    again = await executor.submit(NewJob(user_id=1, work=request()))
    await executor.rec.wait(Finished, again.id)
    assert seen == [2]  # the rung that worked for 64x64 is reused straight away
    local(executor).generator.set_memory_level(0)


async def test_oom_on_every_rung_fails_with_advice(executor: Scheduler) -> None:
    def inject(level: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    local(executor).core.fault_injector = inject
    job = await executor.submit(NewJob(user_id=1, work=request(num_images=2)))
    [failed] = await executor.rec.wait(Failed, job.id)
    assert "smaller size" in failed.message
    assert len(executor.rec.of(Notice, job.id)) == len(local(executor).generator.memory_rungs)
    local(executor).core.fault_injector = None
    local(executor).generator.set_memory_level(0)


async def test_last_rung_makes_images_one_at_a_time(
    executor: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = len(local(executor).generator.memory_rungs)

    def inject(level: int) -> None:
        if level < last:  # every rung but the last runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    generator = local(executor).generator
    batches: list[list[int]] = []  # the seeds of each call into the pipeline
    run = generator.run

    def recording_run(resolved, **kwargs):
        batches.append(list(resolved.seeds))
        return run(resolved, **kwargs)

    monkeypatch.setattr(generator, "run", recording_run)
    local(executor).core.fault_injector = inject
    job = await executor.submit(NewJob(user_id=1, work=request(num_images=3, seed=40)))
    [done] = await executor.rec.wait(Finished, job.id)
    generator.set_memory_level(0)
    assert done.result_data["memory_level"] == last
    assert batches == [[40], [41], [42]]  # one image per call, in seed order
    assert done.result_data["seeds"] == [40, 41, 42] and len(done.result_data["paths"]) == 3
    local(executor).core.levels.clear()
    local(executor).core.fault_injector = None


async def test_deleted_lora_fails_clearly(
    executor: Scheduler, tiny_lora: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "style" / "pytorch_lora_weights.safetensors"
    copy.parent.mkdir()
    shutil.copy(tiny_lora, copy)
    executor.pause()
    job = await executor.submit(
        NewJob(user_id=1, work=request(lora=str(copy.parent), lora_name="style", lora_scale=1.0))
    )
    shutil.rmtree(copy.parent)
    executor.resume()
    [failed] = await executor.rec.wait(Failed, job.id)
    assert "LoRA" in failed.message and "not found" in failed.message


async def test_training_without_trainer_fails_cleanly(executor: Scheduler) -> None:
    job = await executor.submit(
        NewJob(user_id=1, work=TrainSpec(name="x", dataset_dir="", output_dir=""))
    )
    [failed] = await executor.rec.wait(Failed, job.id)
    assert failed.message == "Training is not available yet."


async def test_event_loop_stays_responsive_during_generation(executor: Scheduler) -> None:
    job = await executor.submit(
        NewJob(user_id=1, work=request(num_inference_steps=20, width=128, height=128))
    )
    await executor.rec.wait(Started, job.id)
    lags: list[float] = []
    query_times: list[float] = []
    while executor.snapshot().running:
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - before - 0.01)
        start = time.perf_counter()
        executor.position(job.id)
        executor.eta(job.id)
        query_times.append(time.perf_counter() - start)
    await executor.rec.wait(Finished, job.id)
    assert len(lags) > 5
    # Generous bounds that only a blocked loop would break.
    assert max(lags) < 0.5, max(lags)
    assert max(query_times) < 0.05


def test_fair_queue_positions_match_serving_order() -> None:
    async def scenario() -> None:
        import random

        queue = FairQueue(MemoryJobStore(), per_user_cap=1000, global_cap=1000)
        rng = random.Random(3)
        for _ in range(200):
            await queue.submit(NewJob(user_id=rng.randrange(12), work=GenerationRequest("")))
        for _ in range(40):
            order = queue.order()
            for index, job in enumerate(order, start=1):
                assert queue.position(job.id) == index
            assert queue.pop_next().id == order[0].id
            if rng.random() < 0.3:
                queue.remove(rng.choice(order[1:]).id)
            await queue.submit(NewJob(user_id=rng.randrange(12), work=GenerationRequest("")))

    asyncio.run(scenario())


async def test_concurrent_submits_of_one_user_get_distinct_turns(executor: Scheduler) -> None:
    executor.pause()
    jobs = await asyncio.gather(
        *(executor.submit(NewJob(user_id=1, work=request(f"a {n}"))) for n in range(3))
    )
    other = await executor.submit(NewJob(user_id=2, work=request("b")))
    order = [job.id for job in executor.queue.order()]
    assert order == [jobs[0].id, other.id, jobs[1].id, jobs[2].id]


async def test_announced_etas_match_single_queries(executor: Scheduler) -> None:
    executor.pause()
    for n in range(5):
        await executor.submit(
            NewJob(user_id=n % 2 + 1, work=request(f"x {n}", num_inference_steps=n + 1))
        )
    executor.announcer.seconds_per_unit = 0.5
    before = len(executor.rec.events)
    executor.announcer.announce_positions()
    announced = [e for e in executor.rec.events[before:] if isinstance(e, Queued)]
    assert [e.position for e in announced] == [1, 2, 3, 4, 5]
    for event in announced:
        assert event.eta_s == pytest.approx(executor.eta(event.job.id))
