"""Issue 14 measurements: scheduler at scale (simulated), Ray 1 vs 2 workers, Ray vs local cost.

python -m bench.ray_scale [--quick] [--only sim throughput overhead]

1. sim: the real Scheduler driving simulated workers on a virtual clock (bench/scheduler_sim.py).
2. throughput: jobs per second with 1 and with 2 Ray worker actors (one torch thread each) on a
   private 127.0.0.1 Ray cluster, the same jobs, the same Scheduler.
3. overhead: submit-to-Finished time of one job on a Ray worker vs on the local in-process worker,
   same model and request, alternating, in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load_average, median, record, set_threads
from engine.requests import GenerationRequest
from scheduling.jobs import NewJob

SIM_FULL = {"workers": 200, "users": 20_000, "jobs": 100_000}
SIM_QUICK = {"workers": 200, "users": 2_000, "jobs": 10_000}


def sim(quick: bool) -> dict[str, Any]:
    """Item 1: the simulation toward internet scale."""
    from bench.scheduler_sim import simulate

    size = SIM_QUICK if quick else SIM_FULL
    data = simulate(**size)
    data["target"] = "< 1 ms CPU per job, idle ~0 while jobs wait, Jain >= 0.99"
    data["pass"] = (
        data["cpu_ms_per_job"] < 1
        and data["idle_fraction_while_waiting"] < 0.001
        and data["jain_whole_rounds"] >= 0.99
    )
    data["load"] = load_average()
    record("ray_scale_sim", data)
    return data


def _request(index: int, size: int, steps: int) -> GenerationRequest:
    return GenerationRequest(
        f"a red castle {index}", seed=index, width=size, height=size, num_inference_steps=steps
    )


class _Done:
    """Collects Finished/Failed events and wakes waiters."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.failed: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        from scheduling.events import Failed, Finished

        if isinstance(event, Finished | Failed):
            self.at[event.job.id] = time.perf_counter()
            if isinstance(event, Failed):
                self.failed.append(event.message)
            self.changed.set()

    async def wait(self, ids: list[int], timeout: float = 900) -> None:
        deadline = time.perf_counter() + timeout
        while not all(i in self.at for i in ids):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.1, deadline - time.perf_counter()))
        if self.failed:
            raise RuntimeError(f"a benchmark job failed: {self.failed[0]}")


async def _scheduler(generator: Any, workers: list[Any], out: Path) -> tuple[Any, _Done]:
    from scheduling.jobs import MemoryJobStore
    from scheduling.scheduler import Scheduler

    sched = Scheduler(
        generator,
        MemoryJobStore(),
        generator.config.queue,
        workers=workers,
        image_path=lambda job, i: out / f"job{job.id}-{i}.png",
        close_workers=False,
    )
    done = _Done()
    sched.subscribe(done)
    await sched.start()
    return sched, done


async def _batch(sched: Any, done: _Done, jobs: int, size: int, steps: int) -> float:
    """Submit `jobs` jobs from as many users at once; seconds until the last one finished."""
    started = time.perf_counter()
    ids = []
    for index in range(jobs):
        job = await sched.submit(NewJob(user_id=index, work=_request(index, size, steps)))
        ids.append(job.id)
    await done.wait(ids)
    return max(done.at[i] for i in ids) - started


async def _one(sched: Any, done: _Done, index: int, size: int, steps: int) -> float:
    started = time.perf_counter()
    job = await sched.submit(NewJob(user_id=1, work=_request(index, size, steps)))
    await done.wait([job.id])
    return done.at[job.id] - started


async def _ray_measurements(quick: bool, only: set[str]) -> dict[str, Any]:
    import ray

    from bench.models import app_config, tiny_model_dir
    from engine.generator import TextToImageGenerator
    from scheduling.workers.local import LocalWorker
    from scheduling.workers.ray_backend import NAMESPACE, create_workers

    size, steps = (128, 8) if quick else (256, 20)
    batch = 6 if quick else 20
    pairs = 4 if quick else 15
    config = app_config(tiny_model_dir(), width=size, height=size, num_inference_steps=steps)
    config.queue.previews = False
    config.queue.global_cap, config.queue.per_user_cap = 1000, 100
    out = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the actors: one torch thread each
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=2,
        namespace=NAMESPACE,
        logging_level="WARNING",
    )
    data: dict[str, Any] = {
        "model": "tests' tiny SD pipeline",
        "size_px": size,
        "steps": steps,
        "torch_threads_per_worker": 1,
    }
    actors: list[Any] = []
    try:
        t0 = time.perf_counter()
        actors = create_workers(config, count=2, cache_dir=out / "cache")
        generator = TextToImageGenerator(config)
        generator.load_model()
        local = LocalWorker(generator, config.queue)
        for actor in actors:
            await actor.start()
        data["startup_s"] = time.perf_counter() - t0
        if "throughput" in only:
            rounds: dict[str, list[float]] = {"1": [], "2": []}
            for count in ("1", "2", "2", "1"):  # alternated; the first of each warms up
                sched, done = await _scheduler(generator, actors[: int(count)], out)
                await _batch(sched, done, 2, size, steps)  # warm-up, unmeasured
                rounds[count].append(await _batch(sched, done, batch, size, steps))
                await sched.stop()
                print(f"  {count} worker(s): {batch} jobs in {rounds[count][-1]:.2f}s", flush=True)
            one, two = median(rounds["1"]), median(rounds["2"])
            data["throughput"] = {
                "jobs_per_run": batch,
                "seconds_1_worker": rounds["1"],
                "seconds_2_workers": rounds["2"],
                "jobs_per_s_1": batch / one,
                "jobs_per_s_2": batch / two,
                "speedup": one / two,
                "target": ">= 1.7x",
                "pass": one / two >= 1.7,
            }
        if "overhead" in only:
            # The added cost is per job, not per step: small jobs keep the generation's own
            # noise (±0.5 s on a 4 s job here) from hiding it.
            size, steps = 64, 4
            data["overhead_size_px"], data["overhead_steps"] = size, steps
            ray_sched, ray_done = await _scheduler(generator, actors[:1], out)
            local_sched, local_done = await _scheduler(generator, [local], out)
            await _one(ray_sched, ray_done, 0, size, steps)  # warm-ups
            await _one(local_sched, local_done, 0, size, steps)
            t_local: list[float] = []
            t_ray: list[float] = []
            for i in range(pairs):
                sides = [("local", local_sched, local_done), ("ray", ray_sched, ray_done)]
                for name, sched, done in sides if i % 2 == 0 else sides[::-1]:
                    elapsed = await _one(sched, done, i + 1, size, steps)
                    (t_local if name == "local" else t_ray).append(elapsed)
                print(f"  pair {i + 1}: local {t_local[-1]:.3f}s ray {t_ray[-1]:.3f}s", flush=True)
            await ray_sched.stop()
            await local_sched.stop()
            diffs = [r - loc for loc, r in zip(t_local, t_ray, strict=True)]
            data["overhead"] = {
                "pairs": pairs,
                "local_s": t_local,
                "ray_s": t_ray,
                "median_local_s": median(t_local),
                "median_ray_s": median(t_ray),
                "median_added_ms": 1000 * median(diffs),
                "target": "< 100 ms added per job",
                "pass": median(diffs) < 0.1,
            }
        await local.close()
    finally:
        for actor in actors:
            ray.kill(actor.handle, no_restart=True)
        ray.shutdown()
    return data


def ray_parts(quick: bool, only: set[str]) -> dict[str, Any]:
    """Items 2 and 3 on a private Ray cluster that is shut down afterwards."""
    set_threads(1)
    data = asyncio.run(_ray_measurements(quick, only))
    data["load"] = load_average()
    data["quick"] = quick
    record("ray_scale_ray", data)
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and print their figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.ray_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    parser.add_argument(
        "--only", nargs="+", choices=("sim", "throughput", "overhead"), help="run only these"
    )
    args = parser.parse_args(argv)
    from bench import quiet

    quiet()
    only = set(args.only or ("sim", "throughput", "overhead"))
    if "sim" in only:
        print(json.dumps(sim(args.quick), indent=2), flush=True)
    if only & {"throughput", "overhead"}:
        print(json.dumps(ray_parts(args.quick, only), indent=2, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
