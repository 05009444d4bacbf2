"""Benchmarks on the loaded full-size generator: engine overhead, event-loop lag, LoRA switching."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import WORK, alternate, load_average, median, record
from bench.models import app_config, ensure_sd15, full_loras
from scheduling.jobs import NewJob

PROMPT = "a photo of the red castle at dusk"
SEED = 1234
SIZE = 256
STEPS = 4
_GENERATOR: Any = None


def full_generator() -> Any:
    """The full-size random SD v1.5 loaded once through TextToImageGenerator (256 px, 4 steps)."""
    global _GENERATOR
    if _GENERATOR is None:
        from engine.generator import TextToImageGenerator

        gen = TextToImageGenerator(app_config(ensure_sd15(), width=SIZE, height=SIZE))
        started = time.perf_counter()
        gen.load_model()
        print(f"  loaded full-size pipeline in {time.perf_counter() - started:.1f}s", flush=True)
        _GENERATOR = gen
    return _GENERATOR


def release_full_generator() -> None:
    """Free the shared full-size generator (before a benchmark that loads its own copy)."""
    global _GENERATOR
    if _GENERATOR is not None:
        _GENERATOR.unload()
        _GENERATOR = None
        gc.collect()


def engine_overhead(pairs: int = 3, steps: int = STEPS) -> dict[str, Any]:
    """gen.generate vs gen.pipe(...) with the same settings on the same pipeline object."""
    gen = full_generator()
    neg = gen.config.generation.negative_prompt
    settings = {"num_inference_steps": steps, "guidance_scale": 7.5, "width": SIZE, "height": SIZE}

    def engine() -> Any:
        return gen.generate(PROMPT, negative_prompt=neg, seed=SEED, **settings)[0]

    def direct() -> Any:
        generator = torch.Generator("cpu").manual_seed(SEED)
        return gen.pipe(PROMPT, negative_prompt=neg, generator=generator, **settings).images[0]

    first_engine = engine()  # warm-up; also sets the engine's scheduler on gen.pipe
    first_direct = direct()
    same = bool(np.array_equal(np.asarray(first_engine), np.asarray(first_direct)))
    print(f"  scheduler {type(gen.pipe.scheduler).__name__}, identical images: {same}")
    result = alternate(direct, engine, pairs, label="direct vs engine")
    data = {
        **result,
        "steps": steps,
        "size": SIZE,
        "scheduler": gen.slot.scheduler_name,
        "identical_images": same,
        "target": "median ratio engine/direct <= 1.03",
        "pass": result["median_ratio"] <= 1.03,
        "load": load_average(),
    }
    record("engine_overhead", data)
    return data


async def _loop_lag(gen: Any, steps: int, idle_s: float) -> dict[str, Any]:
    from engine.requests import GenerationRequest
    from scheduling.events import Failed, Finished
    from scheduling.executor import build_scheduler
    from scheduling.jobs import MemoryJobStore

    out = WORK / "loop-lag"
    executor = build_scheduler(
        gen, MemoryJobStore(), image_path=lambda job, i: out / f"job{job.id}-{i}.png"
    )
    done = asyncio.Event()
    executor.subscribe(lambda e: done.set() if isinstance(e, Finished | Failed) else None)

    async def sample(stop: asyncio.Event) -> list[float]:
        lags: list[float] = []
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - started - 0.01) * 1000)
        return lags

    idle_stop = asyncio.Event()
    idle_task = asyncio.create_task(sample(idle_stop))
    await asyncio.sleep(idle_s)
    idle_stop.set()
    idle = await idle_task

    await executor.start()
    busy_stop = asyncio.Event()
    busy_task = asyncio.create_task(sample(busy_stop))
    started = time.perf_counter()
    await executor.submit(
        NewJob(
            user_id=1,
            work=GenerationRequest.from_dict(
                {"prompt": PROMPT, "seed": SEED, "num_inference_steps": steps}
            ),
        )
    )
    await done.wait()
    seconds = time.perf_counter() - started
    busy_stop.set()
    busy = await busy_task
    await executor.stop()
    return {"idle": idle, "busy": busy, "job_seconds": seconds}


def _lag_stats(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "samples": len(lags),
        "max_ms": ordered[-1],
        "p99_ms": p99,
        "median_ms": median(lags),
    }


def loop_lag(steps: int = STEPS, idle_s: float = 5.0) -> dict[str, Any]:
    """Event-loop lag (10 ms sampler) while a full-size generation runs on the engine thread."""
    gen = full_generator()
    raw = asyncio.run(_loop_lag(gen, steps, idle_s))
    busy, idle = _lag_stats(raw["busy"]), _lag_stats(raw["idle"])
    data = {
        "busy": busy,
        "idle_baseline": idle,
        "job_seconds": raw["job_seconds"],
        "steps": steps,
        "size": SIZE,
        "target": "max lag < 50 ms",
        "pass": busy["max_ms"] < 50,
        "load": load_average(),
    }
    record("loop_lag", data)
    return data


def lora_switch(pairs: int = 10) -> dict[str, Any]:
    """LoraManager.activate between two resident full-size LoRAs vs unload + load from disk."""
    gen = full_generator()
    manager = gen.lora
    path_a, path_b = full_loras()
    started = time.perf_counter()
    name_a = manager.load(path_a, "bench_r4")
    first_load = time.perf_counter() - started
    name_b = manager.load(path_b, "bench_r16")
    switches: list[float] = []
    reloads: list[float] = []
    paths = {name_a: path_a, name_b: path_b}
    current = name_b
    manager.activate(current)
    for i in range(pairs):
        target = name_a if current == name_b else name_b
        started = time.perf_counter()
        manager.activate(target, 1.0)
        switches.append(time.perf_counter() - started)
        current = target
        other = name_a if current == name_b else name_b
        started = time.perf_counter()
        manager.unload(other)
        manager.load(paths[other], "bench_r4" if other == name_a else "bench_r16")
        manager.activate(other, 1.0)
        reloads.append(time.perf_counter() - started)
        current = other
        print(
            f"  pair {i + 1}/{pairs}: switch {switches[-1] * 1000:.1f} ms, reload {reloads[-1]:.3f}s"
        )
    ratios = [r / s for s, r in zip(switches, reloads, strict=True)]
    gen.unload_lora_weights()
    data = {
        "pairs": pairs,
        "first_load_s": first_load,
        "switch_median_ms": median(switches) * 1000,
        "switch_max_ms": max(switches) * 1000,
        "reload_median_s": median(reloads),
        "median_ratio_reload_over_switch": median(ratios),
        "lora_files_mb": {p.parent.name: p.stat().st_size / 1e6 for p in (path_a, path_b)},
        "target": "switch < 50 ms and >= 20x faster than reloading",
        "pass": median(switches) * 1000 < 50 and median(ratios) >= 20,
        "load": load_average(),
    }
    record("lora_switch", data)
    return data


def lora_job_switch(pairs: int = 2, steps: int = 2) -> dict[str, Any]:
    """Whole jobs (gen.run) alternating between the two resident LoRAs vs the same LoRA twice."""
    from engine.requests import GenerationRequest

    gen = full_generator()
    path_a, path_b = full_loras()

    def request(path: Path) -> Any:
        return GenerationRequest(PROMPT, seed=SEED, num_inference_steps=steps, lora=str(path))

    gen.run(request(path_a))
    gen.run(request(path_b))
    state = {"last": path_b}

    def same() -> None:
        gen.run(request(state["last"]))

    def switched() -> None:
        state["last"] = path_a if state["last"] == path_b else path_b
        gen.run(request(state["last"]))

    result = alternate(same, switched, pairs, label="same LoRA vs switched LoRA job")
    gen.unload_lora_weights()
    record("lora_job_switch", {**result, "steps": steps, "load": load_average()})
    return result
