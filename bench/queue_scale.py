"""Queue scale: 1,000 waiting jobs from 100 users: submit, position, cancel, ETA and fairness."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench import load_average, median, record
from bench.models import app_config, tiny_model_dir
from scheduling.jobs import NewJob

USERS = 100
PER_USER = 10


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    raw = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "median_ms": median(ms),
        "p99_ms": p99,
        "max_ms": max(ms),
        "max_index": raw.index(max(raw)),
        "first_ms": raw[0],
        "max_after_first_ms": max(raw[1:]) if len(raw) > 1 else raw[0],
    }


def jain(counts: list[int]) -> float:
    """Jain's fairness index of per-user counts (1.0 = perfectly even)."""
    total = sum(counts)
    squares = sum(c * c for c in counts)
    return total * total / (len(counts) * squares) if squares else 1.0


async def _run(users: int, per_user: int) -> dict[str, Any]:
    from engine.config import QueueConfig
    from engine.generator import TextToImageGenerator
    from engine.requests import GenerationRequest
    from scheduling.executor import build_scheduler
    from scheduling.jobs import MemoryJobStore
    from scheduling.workers.local import LocalWorker

    gen = TextToImageGenerator(app_config(tiny_model_dir(), width=64, height=64))
    config = QueueConfig(per_user_cap=per_user, global_cap=max(users * per_user, 1))
    executor = build_scheduler(gen, MemoryJobStore(), config)
    executor.announcer.loop = asyncio.get_running_loop()  # not started: every job stays waiting
    submits: list[float] = []
    jobs: dict[int, int] = {}
    # Worst case for a FIFO queue: each user submits all their jobs in one burst, user by user.
    for user in range(users):
        for i in range(per_user):
            request = GenerationRequest(f"a red castle {i}", seed=user * 100 + i)
            started = time.perf_counter()
            job = await executor.submit(NewJob(user_id=user, work=request))
            submits.append(time.perf_counter() - started)
            jobs[job.id] = user
    waiting = len(executor.queue)
    ids = list(jobs)
    rng = random.Random(0)
    positions: list[float] = []
    for job_id in ids:
        started = time.perf_counter()
        executor.position(job_id)
        positions.append(time.perf_counter() - started)
    etas: list[float] = []
    executor.announcer.seconds_per_unit = 0.1  # as after the first job ran, so eta() does its work
    for job_id in rng.sample(ids, 100):
        started = time.perf_counter()
        executor.eta(job_id)
        etas.append(time.perf_counter() - started)
    started = time.perf_counter()
    executor.announcer.announce_positions()  # what every job start does on the event loop
    announce = time.perf_counter() - started
    order = [job.user_id for job in executor.queue.order()]
    before_first: dict[int, int] = {}
    for index, user in enumerate(order):
        before_first.setdefault(user, index)
    first_100 = order[:100]
    counts = [first_100.count(u) for u in range(users)]
    cancels: list[float] = []
    for job_id in rng.sample(ids, 200):
        started = time.perf_counter()
        await executor.cancel(job_id)
        cancels.append(time.perf_counter() - started)
    await asyncio.sleep(0)
    for worker in executor.workers:
        if isinstance(worker, LocalWorker):
            worker.thread.shutdown(wait=False)
    return {
        "waiting": waiting,
        "submit": _stats(submits),
        "position": _stats(positions),
        "cancel": _stats(cancels),
        "eta": _stats(etas),
        "announce_positions_ms": announce * 1000,
        "max_served_before_first_job": max(before_first.values()),
        "distinct_users_in_first_100": sum(1 for c in counts if c),
        "jain_first_100": jain(counts),
        "fifo_max_served_before_first_job": (users - 1) * per_user,
    }


def queue_scale(users: int = USERS, per_user: int = PER_USER) -> dict[str, Any]:
    """Run the queue benchmark and record it."""
    data = asyncio.run(_run(users, per_user))
    ops = ("submit", "position", "cancel")
    data["target"] = "submit, position, cancel < 1 ms each (median and max)"
    data["pass"] = all(data[op]["max_ms"] < 1 for op in ops)
    data["pass_median"] = all(data[op]["median_ms"] < 1 for op in ops)
    data["load"] = load_average()
    record("queue_scale", data)
    return data


if __name__ == "__main__":
    import json

    print(json.dumps(queue_scale(), indent=2))
