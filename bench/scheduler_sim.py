"""The real Scheduler driving simulated workers on a virtual clock (issue 14, toward scale).

Each simulated worker's generate is ``asyncio.sleep(duration)`` on an event loop whose clock
jumps to the next timer whenever the loop would wait, so a 100,000-job day runs in the time the
scheduler's own code takes. What is measured is therefore exactly the scheduler's cost: CPU time
per job, worker idle time while jobs wait (in virtual seconds: structural idleness, such as a
dispatcher that leaves a free worker unused), fairness and memory.
"""

from __future__ import annotations

import asyncio
import gc
import random
import resource
import selectors
import time
from typing import Any

from engine.config import GenerationConfig, QueueConfig
from engine.requests import GenerationRequest, GenerationResult, resolve_request
from scheduling.events import JobEvent, Queued, Started
from scheduling.jobs import MemoryJobStore, NewJob
from scheduling.scheduler import Scheduler
from scheduling.workers.base import JobRun, WorkerInfo


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that, instead of sleeping until the next timer, moves the loop's clock there."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if events or timeout is None or timeout <= 0:
            return events if events or timeout is not None else super().select(None)
        self.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: loop.time() only advances when every task waits on a timer."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        """The virtual clock, in seconds."""
        return self._virtual.now


class _Generator:
    """What Scheduler.submit needs from a generator: validation with small defaults."""

    model_defaults: dict[str, Any] = {}

    def __init__(self) -> None:
        self.config = GenerationConfig(width=512, height=512)

    def prepare(self, request: GenerationRequest) -> Any:
        """Validate and fill the request, as TextToImageGenerator.prepare does without LoRA tags."""
        return resolve_request(request, self.config, self.model_defaults)


class SimWorker:
    """A worker whose job is a sleep of the job's simulated duration on the virtual clock."""

    supports_training = False
    shares_process = True

    def __init__(
        self, name: str, busy: list[tuple[float, float]], durations: dict[str, float], resolved: Any
    ) -> None:
        self.name = name
        self.durations = durations  # prompt -> simulated seconds
        self.resolved = resolved
        self.held_loras: set[str] = set()
        self.jobs_done = 0
        self.alive = True
        self._busy = busy

    async def start(self) -> None:
        """Nothing to load."""

    async def wait_alive(self) -> None:
        """Always alive."""

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run fn here."""
        return fn(*args)

    async def generate(self, run: JobRun, sink: Any, image_path: Any) -> Any:
        """Sleep for the job's duration; return an empty result with that duration."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        seconds = self.durations[run.job.request.prompt]
        await asyncio.sleep(seconds)
        self._busy.append((started, loop.time()))
        self.jobs_done += 1
        resolved = self.resolved
        return GenerationResult([], list(resolved.seeds), [], resolved, seconds, 0.1), {}

    def info(self, current: JobRun | None) -> WorkerInfo:
        """A description for /admin workers."""
        return WorkerInfo(self.name, "sim", "sim", "none", "idle", None, self.jobs_done, None)

    async def close(self) -> None:
        """Nothing to release."""


def jain(values: list[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1.0 when all equal, 1/n at worst."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def _idle_while_waiting(
    submits: list[float], starts: list[float], busy: list[tuple[float, float]], workers: int
) -> tuple[float, float]:
    """Worker-seconds idle while a job waited, and the total worker-seconds of that time."""
    events: list[tuple[float, int, int]] = []  # (time, order, (d_waiting, d_busy) code)
    events += [(t, 1, 0) for t in submits]  # +1 waiting
    events += [(t, 1, 1) for t in starts]  # -1 waiting
    events += [(s, 1, 2) for s, _ in busy]  # +1 busy
    events += [(e, 0, 3) for _, e in busy]  # -1 busy (ends first at a tie)
    events.sort()
    waiting = busy_now = 0
    last = 0.0
    idle = span = 0.0
    for t, _, code in events:
        if waiting > 0:
            idle += (workers - busy_now) * (t - last)
            span += workers * (t - last)
        last = t
        waiting += (1, -1, 0, 0)[code]
        busy_now += (0, 0, 1, -1)[code]
    return idle, span


async def _simulate(
    workers: int, users: int, jobs: int, seed: int, mean_s: float
) -> dict[str, Any]:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    busy: list[tuple[float, float]] = []
    durations: dict[str, float] = {}
    resolved = _Generator().prepare(GenerationRequest(prompt="x", seed=1))
    pool = [SimWorker(f"sim-{i}", busy, durations, resolved) for i in range(workers)]
    per_user = -(-jobs // users)
    # Past the settings' upper bound of 10,000 waiting: the simulation holds the whole day.
    config = QueueConfig().model_copy(update={"per_user_cap": per_user, "global_cap": jobs})
    sched = Scheduler(_Generator(), MemoryJobStore(), config, workers=pool)  # type: ignore[arg-type]
    starts: dict[int, float] = {}
    queued_events = 0

    def listener(event: JobEvent) -> None:
        nonlocal queued_events
        if isinstance(event, Started):
            starts[event.job.id] = loop.time()
        elif isinstance(event, Queued):
            queued_events += 1

    sched.subscribe(listener)
    await sched.start()
    # Users arrive one after another and each submits all their jobs at once: the order in
    # which a FIFO queue would starve the late users. All arrive within the first 1 % of the
    # time the pool needs for the whole backlog (a flash crowd), so nearly every user then
    # waits with several jobs and the fair window spans several rounds.
    order = [u for u in range(users) for _ in range(per_user)][:jobs]
    arrive_span = 0.01 * jobs * mean_s / workers
    gap = arrive_span / users
    submitted: dict[int, float] = {}
    user_of: dict[int, int] = {}
    tags: dict[int, float] = {}
    gc.collect()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    previous = None
    for user in order:
        if user != previous and previous is not None:
            await asyncio.sleep(gap)
        previous = user
        prompt = f"user {user} job {len(submitted)}"
        durations[prompt] = rng.uniform(0.5 * mean_s, 1.5 * mean_s)
        job = await sched.submit(NewJob(user_id=user, work=GenerationRequest(prompt, seed=user)))
        submitted[job.id] = loop.time()
        user_of[job.id] = user
        tags[job.id] = job.tag
    last_submit = loop.time()
    while len(busy) < jobs:
        await asyncio.sleep(mean_s)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    await sched.stop()
    fair = _fairness(order, starts, submitted, user_of, tags, last_submit)
    idle, span = _idle_while_waiting(list(submitted.values()), list(starts.values()), busy, workers)
    waits = [starts[j] - submitted[j] for j in starts]
    return {
        "workers": workers,
        "users": users,
        "jobs": jobs,
        "job_seconds_mean_virtual": mean_s,
        "store": "MemoryJobStore (in memory; the bot uses SQLite through storage/)",
        "scheduler_cpu_s": cpu,
        "wall_s": wall,
        "cpu_ms_per_job": 1000 * cpu / jobs,
        "virtual_makespan_s": loop.time(),
        "ideal_makespan_s": sum(e - s for s, e in busy) / workers,
        "idle_worker_s_while_waiting": idle,
        "idle_fraction_while_waiting": idle / span if span else 0.0,
        **fair,
        "queued_events": queued_events,
        "max_wait_s": max(waits),
        "mean_wait_s": sum(waits) / len(waits),
    }


def _fairness(
    order: list[int],
    starts: dict[int, float],
    submitted: dict[int, float],
    user_of: dict[int, int],
    tags: dict[int, float],
    last_submit: float,
) -> dict[str, Any]:
    """Jain's index over the users that are backlogged throughout a window after the last arrival.

    Backlogged users: those with a job waiting when the last user arrived. The window runs from
    then until the first of them has nothing left waiting; each user's count of jobs started in
    it is their share of service. "time window": exactly that, which even a perfect round-robin
    scores below 1 because the window cuts a round (counts k and k + 1). "whole rounds": the
    same window trimmed to whole rounds (a round = one fair tag value; from the first start of
    the round after the last arrival's to the first start of the round in which the first user
    runs dry), where an exact round-robin scores 1.0. Also what FIFO order would score on a
    window of the same number of jobs.
    """
    by_start = sorted(starts, key=lambda j: (starts[j], j))
    backlogged: dict[int, float] = {}  # user -> tag of their last job
    for job_id in by_start:
        if submitted[job_id] <= last_submit < starts[job_id]:
            user = user_of[job_id]
            backlogged[user] = max(backlogged.get(user, 0.0), tags[job_id])
    last_job = {}
    for job_id in by_start:
        if user_of[job_id] in backlogged:
            last_job[user_of[job_id]] = starts[job_id]
    window_end = min(last_job.values())
    served_tag = max((tags[j] for j in by_start if starts[j] < last_submit), default=0.0)
    first_dry_tag = min(backlogged.values())
    round_start = min(
        starts[j] for j in by_start if tags[j] > served_tag and starts[j] >= last_submit
    )
    round_end = min(starts[j] for j in by_start if tags[j] >= first_dry_tag)

    def counts(lo: float, hi: float, closed: bool) -> dict[int, int]:
        out = dict.fromkeys(backlogged, 0)
        for job_id in by_start:
            t = starts[job_id]
            if lo <= t and (t <= hi if closed else t < hi) and user_of[job_id] in out:
                out[user_of[job_id]] += 1
        return out

    in_time = counts(last_submit, window_end, True)
    rounds = counts(round_start, round_end, False)
    before = sum(1 for j in by_start if starts[j] < last_submit)
    fifo = dict.fromkeys(backlogged, 0)
    for user in order[before : before + sum(in_time.values())]:
        if user in fifo:
            fifo[user] += 1
    return {
        "fair_users_backlogged": len(backlogged),
        "fair_time_window_s": [last_submit, window_end],
        "fair_time_window_jobs": sum(in_time.values()),
        "jain_time_window": jain([float(c) for c in in_time.values()]),
        "time_window_counts_min_max": [min(in_time.values()), max(in_time.values())],
        "fair_rounds_window_s": [round_start, round_end],
        "fair_rounds": first_dry_tag - served_tag - 1,
        "jain_whole_rounds": jain([float(c) for c in rounds.values()]),
        "whole_rounds_counts_min_max": [min(rounds.values()), max(rounds.values())],
        "jain_fifo_same_jobs": jain([float(c) for c in fifo.values()]),
    }


def simulate(
    workers: int = 200, users: int = 20_000, jobs: int = 100_000, seed: int = 0, mean_s: float = 5.0
) -> dict[str, Any]:
    """Run the simulation on a virtual-clock loop; figures plus peak RSS."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loop = VirtualClockLoop()
    try:
        data = loop.run_until_complete(_simulate(workers, users, jobs, seed, mean_s))
    finally:
        loop.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data["peak_rss_mb"] = peak / 1024
    data["peak_rss_growth_mb"] = (peak - rss0) / 1024
    return data


if __name__ == "__main__":
    import json
    import sys

    args = [int(a) for a in sys.argv[1:4]]
    print(json.dumps(simulate(*args), indent=2))
