"""FairQueue's blocked order against a plain sorted list, across block splits and removals."""

from __future__ import annotations

import random

import pytest

from engine.requests import GenerationRequest
from scheduling.jobs import JobRecord, MemoryJobStore
from scheduling.queue import FairQueue, _SortedJobs


def test_blocked_order_matches_a_sorted_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_SortedJobs, "LOAD", 4)  # many splits and emptied blocks in 600 jobs
    rng = random.Random(3)
    weights: dict[int, int] = {}
    queue = FairQueue(MemoryJobStore(), weight=lambda job: float(weights[job.id]))
    reference: list[JobRecord] = []
    next_id = 1
    for _ in range(600):
        if reference and rng.random() < 0.4:
            victim = rng.choice(reference)
            taken = queue.take(victim.id) if rng.random() < 0.5 else queue.remove(victim.id)
            assert taken is victim
            reference.remove(victim)
        else:
            job = JobRecord(
                id=next_id,
                user_id=rng.randrange(20),
                work=GenerationRequest("x"),
                tag=float(rng.randrange(30)),
                priority=rng.choice((0, 0, 1)),
            )
            weights[job.id] = rng.randrange(1, 5)
            next_id += 1
            queue.push(job)
            reference.append(job)
        reference.sort(key=lambda j: (-j.priority, j.tag, j.id))
        assert queue.order() == reference
    assert len(queue) == len(reference) > 20
    for index, job in enumerate(reference):
        assert queue.position(job.id) == index + 1
        assert queue.weight_ahead(job.id) == sum(weights[j.id] for j in reference[:index])
    assert queue.slice(5, 17) == reference[5:17] and queue.head(3) == reference[:3]
    assert queue.jobs_ahead(reference[9].id) == reference[:9]
    while reference:
        assert queue.pop_next() is reference.pop(0)
    assert len(queue) == 0 and queue.pop_next() is None


def test_snapshot_waiting_for_keeps_the_users_jobs_in_order() -> None:
    from scheduling.scheduler import QueueSnapshot

    jobs = [JobRecord(id=i, user_id=i % 3, work=GenerationRequest("x")) for i in range(1, 10)]
    snapshot = QueueSnapshot(running=[], waiting=jobs[::-1], paused=False)
    assert [job.id for job in snapshot.waiting_for(1)] == [7, 4, 1]
    assert snapshot.waiting_for(99) == []
