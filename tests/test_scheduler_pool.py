"""The scheduler with several (fake) workers: fair order, affinity bounds, a worker dying."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.config import GenerationConfig, QueueConfig
from engine.requests import GenerationRequest, GenerationResult, resolve_request
from scheduling.announcer import NO_WORKER
from scheduling.events import Failed, Finished, Notice, Queued, Started
from scheduling.jobs import MemoryJobStore, NewJob
from scheduling.scheduler import Scheduler
from scheduling.workers.base import JobRun, WorkerInfo, WorkerLost
from tests.test_executor import Recorder


class StubGenerator:
    """Only what submit needs: request validation with small defaults."""

    model_defaults: dict[str, Any] = {}

    def prepare(self, request: Any) -> Any:
        return resolve_request(request, GenerationConfig(width=64, height=64), {})


class FakeWorker:
    """A worker that sleeps per job; it 'dies' under prompts listed in deadly.

    A job whose prompt is "long" holds the worker until the test sets `release`.
    """

    supports_training = False
    shares_process = True

    def __init__(self, name: str, held: set[str] | None = None, deadly: set[str] = frozenset()):
        self.name = name
        self.held_loras = set(held or ())
        self.deadly = deadly
        self.jobs_done = 0
        self.alive = True
        self.ran: list[int] = []
        self.release = asyncio.Event()

    async def start(self) -> None:
        pass

    async def wait_alive(self) -> None:
        await asyncio.sleep(0.01)
        self.alive = True

    async def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def generate(self, run: JobRun, sink: Any, image_path: Any) -> Any:
        request = run.job.request
        await asyncio.sleep(0.02)
        if request.prompt == "long":
            await self.release.wait()
        if request.prompt in self.deadly:
            self.alive = False
            raise WorkerLost(f"{self.name} killed")
        self.ran.append(run.job.id)
        self.jobs_done += 1
        resolved = StubGenerator().prepare(request)
        result = GenerationResult([], list(resolved.seeds), [], resolved, 0.02, 0.01)
        return result, {"seeds": list(resolved.seeds), "worker": self.name}

    def info(self, current: JobRun | None) -> WorkerInfo:
        return WorkerInfo(self.name, "n", "cpu", "none", "idle", None, self.jobs_done, None)

    async def close(self) -> None:
        pass


def request(prompt: str, lora: str | None = None) -> GenerationRequest:
    return GenerationRequest(prompt, seed=1, lora=lora)


async def _scheduler(workers: list[Any], window: int = 2) -> Scheduler:
    sched = Scheduler(
        StubGenerator(),  # type: ignore[arg-type]
        MemoryJobStore(),
        QueueConfig(per_user_cap=50, global_cap=500),
        workers=workers,
        affinity_window=window,
    )
    rec = Recorder()
    sched.subscribe(rec)
    sched.rec = rec  # type: ignore[attr-defined]
    await sched.start()
    return sched


async def test_jobs_start_in_fair_order_across_workers() -> None:
    workers = [FakeWorker("w0"), FakeWorker("w1"), FakeWorker("w2")]
    sched = await _scheduler(workers)
    sched.pause()
    for user in (1, 2, 3):
        for n in range(4):
            await sched.submit(NewJob(user_id=user, work=request(f"u{user} {n}")))
    order = [job.id for job in sched.queue.order()]
    sched.resume()
    await sched.rec.wait(Finished, count=12)
    started = [e.job.id for e in sched.rec.of(Started)]
    assert started == order
    assert all(w.jobs_done >= 2 for w in workers)  # every worker took a share
    await sched.stop()


async def test_affinity_prefers_a_holder_but_never_overtakes_more_than_the_window() -> None:
    holder, other = FakeWorker("holder", held={"style"}), FakeWorker("other")
    sched = await _scheduler([holder, other], window=2)
    sched.pause()
    plain, styled = [], []
    for user in (1, 2, 3, 4):  # fair order: plain, styled, plain, styled, ...
        plain.append(await sched.submit(NewJob(user_id=user, work=request(f"plain {user}"))))
        styled.append(await sched.submit(NewJob(user_id=user + 10, work=request("s", "style"))))
    other.alive = False  # only the holder takes jobs: it could pick styled jobs all day
    sched.resume()
    await sched.rec.wait(Started, count=3)
    first = [e.job.id for e in sched.rec.of(Started)[:3]]
    # styled jobs may jump ahead, but plain[0] is overtaken at most twice
    assert first[:2] == [styled[0].id, styled[1].id] and first[2] == plain[0].id
    other.alive = True  # back in the pool at the holder's next finish
    await sched.rec.wait(Finished, count=8)
    await sched.stop()


async def test_a_job_that_kills_its_worker_three_times_fails_and_others_run() -> None:
    workers = [FakeWorker("w0", deadly={"boom"}), FakeWorker("w1", deadly={"boom"})]
    sched = await _scheduler(workers)
    bad = await sched.submit(NewJob(user_id=1, work=request("boom")))
    good = [await sched.submit(NewJob(user_id=u, work=request(f"ok {u}"))) for u in (2, 3, 4)]
    [failed] = await sched.rec.wait(Failed, bad.id)
    assert "stopped its worker 3 times" in failed.message
    assert len(sched.rec.of(Notice, bad.id)) == 2  # told twice that it runs again
    for job in good:
        assert len(await sched.rec.wait(Finished, job.id)) == 1
    assert sched.store.jobs[bad.id].status == "failed"
    for _ in range(500):  # the dead worker is brought back right after its job is settled
        if all(w.alive for w in workers):
            break
        await asyncio.sleep(0.01)
    assert all(w.alive for w in workers) and sched.dispatcher_alive
    await sched.stop()


class GatedWorker(FakeWorker):
    """A fake worker that, once dead, comes back only when the test opens its gate."""

    def __init__(self, name: str, deadly: set[str]) -> None:
        super().__init__(name, deadly=deadly)
        self.gate = asyncio.Event()
        self.given: list[tuple[int, bool]] = []  # (job id, alive then) of each job handed over

    async def generate(self, run: JobRun, sink: Any, image_path: Any) -> Any:
        self.given.append((run.job.id, self.alive))
        return await super().generate(run, sink, image_path)

    async def wait_alive(self) -> None:
        await self.gate.wait()
        self.deadly = set()
        self.alive = True


def _no_worker_notices(sched: Scheduler, job_id: int) -> int:
    return sum(1 for e in sched.rec.of(Notice, job_id) if e.message == NO_WORKER)


async def test_with_no_worker_alive_jobs_wait_and_users_are_told() -> None:
    workers = [GatedWorker("w0", {"boom"}), GatedWorker("w1", {"boom"})]
    sched = await _scheduler(workers)
    long = await sched.submit(NewJob(user_id=3, work=request("long")))
    await sched.rec.wait(Started, long.id)  # w0 runs something long: a death leaves it alive
    first = await sched.submit(NewJob(user_id=1, work=request("boom")))
    await sched.rec.wait(Notice, first.id)  # w1 died under it; w0 is still alive
    assert _no_worker_notices(sched, first.id) == 0
    workers[0].release.set()
    for _ in range(500):  # w0 takes the job and dies too: now nobody is alive
        if not any(w.alive for w in workers) and _no_worker_notices(sched, first.id):
            break
        await asyncio.sleep(0.01)
    assert not any(w.alive for w in workers)
    later = await sched.submit(NewJob(user_id=2, work=request("later")))
    await sched.rec.wait(Notice, later.id)
    assert _no_worker_notices(sched, first.id) == 1 and _no_worker_notices(sched, later.id) == 1
    opened_at = len(sched.rec.events)
    workers[1].gate.set()
    for job in (first, later):
        assert len(await sched.rec.wait(Finished, job.id)) == 1
    # It waited: no start before the gate opened, and never handed to a dead worker.
    assert not [
        e for e in sched.rec.events[:opened_at] if isinstance(e, Started) and e.job.id == later.id
    ]
    assert all(alive for w in workers for _, alive in w.given)
    assert [given for w in workers for given in w.given if given[0] == later.id] == [
        (later.id, True)
    ]
    assert _no_worker_notices(sched, later.id) == 1  # told once, not on every pass
    workers[0].gate.set()
    await sched.stop()


async def test_a_worker_added_while_serving_takes_the_waiting_job() -> None:
    first = FakeWorker("w0")
    sched = await _scheduler([first])
    long = await sched.submit(NewJob(user_id=2, work=request("long")))
    await sched.rec.wait(Started, long.id)  # the only worker is busy until released
    job = await sched.submit(NewJob(user_id=1, work=request("waits")))
    assert not sched.rec.of(Started, job.id)
    await sched.rec.wait(Queued, job.id)
    joined = FakeWorker("new-node")
    await sched.add_worker(joined)
    assert len(await sched.rec.wait(Finished, job.id, timeout=5)) == 1
    assert len(sched.rec.of(Started, job.id)) == 1
    assert first.ran == [] and joined.ran == [job.id]  # it waited for the new worker
    assert sched.workers == [first, joined]
    assert [i.name for i in sched.workers_info()] == ["w0", "new-node"]
    first.release.set()
    await sched.stop()


def test_local_backend_does_not_import_ray(tmp_path: Path) -> None:
    code = """
import asyncio, sys
import bot, scheduling.executor, scheduling.workers
from scheduling.executor import build_scheduler
from scheduling.scheduler import Scheduler
from scheduling.jobs import MemoryJobStore
from tests.test_scheduler_pool import StubGenerator
async def main():
    ex = build_scheduler(StubGenerator(), MemoryJobStore())
    await ex.start()
    await ex.stop()
asyncio.run(main())
assert "ray" not in sys.modules, "ray was imported"
print("no ray")
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0 and "no ray" in out.stdout, out.stderr[-2000:]


async def test_one_run_counts_one_attempt_in_the_store_and_the_scheduler() -> None:
    sched = await _scheduler([FakeWorker("w0")])
    job = await sched.submit(NewJob(user_id=1, work=request("once")))
    [started] = await sched.rec.wait(Started, job.id)
    await sched.rec.wait(Finished, job.id)
    assert sched.store.jobs[job.id].attempts == 1  # type: ignore[attr-defined]
    assert started.job.attempts == 1
    await sched.stop()


async def test_a_long_queue_hears_its_places_in_rolling_slices(monkeypatch) -> None:
    import scheduling.announcer as announcer_module
    from scheduling.events import Queued

    monkeypatch.setattr(announcer_module, "ANNOUNCE_ALL", 4)
    monkeypatch.setattr(announcer_module, "ANNOUNCE_SLICE", 2)
    sched = await _scheduler([FakeWorker("w0")])
    sched.pause()
    for user in range(7):
        await sched.submit(NewJob(user_id=user, work=request(f"u{user}")))
    sched.announcer.seconds_per_unit = 0.5  # as after a first job, so ETAs are announced
    order = sched.queue.order()
    heard: list[list[int]] = []
    for _ in range(4):
        before = len(sched.rec.events)
        sched.announcer.announce_positions()
        announced = [e for e in sched.rec.events[before:] if isinstance(e, Queued)]
        heard.append([e.position for e in announced])
        for event in announced:
            assert event.job is order[event.position - 1]
            assert event.eta_s == pytest.approx(sched.eta(event.job.id))
    # 7 waiting > 4: the head (1, 2) every time, then a slice sweeping places 3..7.
    assert heard == [[1, 2, 3, 4], [1, 2, 5, 6], [1, 2, 7], [1, 2, 3, 4]]
    await sched.stop()
