"""The web-UI HTTP API's added cost per image over the engine alone (issue 23), on the CPU.

    python -m bench.api_cost [--pairs 5] [--full] [--sd15 PATH] [--threads 1]

One loaded generator, one SQLite store, one scheduler (deliver=True, as the bot and `serve`).
`direct`: the request submitted to the scheduler, its Finished event awaited, then marked
delivered. `http`: the same request as POST /sdapi/v1/txt2img over 127.0.0.1 with aiohttp
(JSON, the fair queue, waiting by events, reading the PNG, base64, the answer, settling the job;
save_images left false, as clients do). The two alternate; the figure is the median difference
per image, and the ratio. With --full the full-size random SD v1.5 runs at 256 px, 4 steps.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load_average, quiet, record, set_threads

PROMPT = "a large red circle in the center on a blue background"


async def _pairs(model_dir: Path, size: int, steps: int, pairs: int, batch: int) -> dict[str, Any]:
    import aiohttp

    from bench.models import app_config
    from engine.front_door import EngineDoor
    from engine.generator import TextToImageGenerator
    from engine.requests import GenerationRequest
    from scheduling.events import Finished, JobEvent
    from scheduling.executor import build_scheduler
    from scheduling.jobs import NewJob
    from storage import Storage, StorageSettings
    from webapi.context import ApiContext
    from webapi.server import ApiServer
    from webapi.settings import ApiSettings

    gen = TextToImageGenerator(app_config(model_dir, width=size, height=size))
    await asyncio.to_thread(gen.load_model)
    tmp = Path(tempfile.mkdtemp(prefix="api-cost-"))
    settings = StorageSettings(
        db_path=tmp / "db.sqlite3", outputs_dir=tmp / "out", lora_dir=tmp / "loras"
    )
    storage = await Storage.open(settings.db_path, settings=settings)
    queue = gen.config.queue.model_copy(update={"per_user_cap": 100})
    scheduler = build_scheduler(
        gen, storage, queue, image_path=lambda job, i: storage.files.image_path(job.id, i),
        deliver=True,
    )  # fmt: skip
    door = EngineDoor(gen, scheduler.run_on_engine)
    api = ApiSettings().model_copy(update={"port": 0})
    server = ApiServer(ApiContext(scheduler, storage, door, gen.config, api))
    finished: dict[int, asyncio.Future[JobEvent]] = {}

    def on_event(event: JobEvent) -> None:
        future = finished.get(event.job.id)
        if isinstance(event, Finished) and future is not None and not future.done():
            future.set_result(event)

    scheduler.subscribe(on_event)
    await scheduler.start()
    await server.start()
    body = {"prompt": PROMPT, "seed": 1, "steps": steps, "width": size, "height": size,
            "batch_size": batch, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}  # fmt: skip
    request = GenerationRequest(
        prompt=PROMPT, seed=1, num_inference_steps=steps, width=size, height=size,
        num_images=batch, scheduler="DPM++ 2M Karras",
    )  # fmt: skip

    async def direct() -> None:
        async def register(job: Any) -> None:
            finished[job.id] = asyncio.get_running_loop().create_future()

        job = await scheduler.submit(NewJob(user_id=1, work=request), acknowledge=register)
        await finished[job.id]
        await storage.mark_delivered(job.id)

    async with aiohttp.ClientSession() as http:

        async def over_http() -> None:
            async with http.post(server.url + "/sdapi/v1/txt2img", json=body) as response:
                answer = await response.json()
                assert response.status == 200 and len(answer["images"]) == batch, answer

        await direct()  # warm-up of both paths
        await over_http()
        times: dict[str, list[float]] = {"direct": [], "http": []}
        for i in range(pairs):
            order = (("direct", direct), ("http", over_http))
            for name, run in order if i % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                await run()
                times[name].append(time.perf_counter() - started)
    await server.stop()
    await scheduler.stop()
    await storage.close()
    gen.unload()
    a, b = statistics.median(times["direct"]), statistics.median(times["http"])
    diffs = [(h - d) / batch for d, h in zip(times["direct"], times["http"], strict=True)]
    return {
        "size": size,
        "steps": steps,
        "batch": batch,
        "pairs": pairs,
        "median_direct_s": round(a, 4),
        "median_http_s": round(b, 4),
        "median_added_ms_per_image": round(statistics.median(diffs) * 1000, 1),
        "ratio": round(b / a, 3),
        "times": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }


def api_cost(pairs: int = 5, full: bool = False, sd15: Path | None = None) -> dict[str, Any]:
    """Added cost of the HTTP API per image: tiny model (64 px), and full SD v1.5 at 256 px."""
    from bench.models import SD15_DIR, ensure_sd15, tiny_model_dir

    results = {
        "tiny 64px 3 steps x1": asyncio.run(_pairs(tiny_model_dir(), 64, 3, pairs, 1)),
        "tiny 64px 3 steps x4": asyncio.run(_pairs(tiny_model_dir(), 64, 3, pairs, 4)),
    }
    if full:
        folder = ensure_sd15(sd15 or SD15_DIR)
        results["sd15 256px 4 steps x1"] = asyncio.run(_pairs(folder, 256, 4, 2, 1))
    record("api_cost", results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the added cost per image."""
    parser = argparse.ArgumentParser(prog="python -m bench.api_cost")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="also the full-size SD v1.5 at 256 px")
    parser.add_argument("--sd15", type=Path, default=None, help="folder of the full-size model")
    args = parser.parse_args(argv)
    quiet()
    set_threads(args.threads)
    print(f"load average at start: {load_average()}")
    results = api_cost(args.pairs, args.full, args.sd15)
    print(f"load average at end: {load_average()}")
    for where, data in results.items():
        print(f"{where}: +{data['median_added_ms_per_image']} ms per image "
              f"({data['median_http_s']:.3f}s vs {data['median_direct_s']:.3f}s, "
              f"{data['ratio']:.3f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
