"""Discord path overhead: /imagine through the fake Discord to the final upload vs gen.run alone."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load_average, median, record, summarize_pairs


def _is_result(event: Any) -> bool:
    return (
        event.kind == "edit_original"
        and bool(event.files)
        and not event.files[0].filename.startswith("preview")
    )


async def _run(model_dir: Path, pairs: int, generation: dict[str, Any], timeout: float) -> Any:
    from tests.e2e_harness import make_world, running
    from tests.fake_discord import FakeDiscord

    with tempfile.TemporaryDirectory(dir=model_dir.parent) as tmp:
        async with FakeDiscord() as fake:
            world = make_world(fake, Path(tmp))
            async with running(world, model_dir, generation=generation) as bot:
                gen = bot.generator
                seed = 5
                user = world.alice

                async def discord_side() -> float:
                    started = time.monotonic()
                    it = await world.slash(
                        user, "imagine", {"prompt": "a red castle", "seed": seed}
                    )
                    event = await it.wait_for(_is_result, timeout=timeout)
                    return event.at - started

                warm = await discord_side()  # warm-up, and the request the cog built
                job = await bot.storage.get_job(1)
                request = job.request

                async def engine_side() -> float:
                    started = time.monotonic()
                    await bot.executor.run_on_engine(gen.run, request)
                    return time.monotonic() - started

                await engine_side()
                times_engine: list[float] = []
                times_discord: list[float] = []
                for i in range(pairs):
                    if i % 2 == 0:
                        times_engine.append(await engine_side())
                        times_discord.append(await discord_side())
                    else:
                        times_discord.append(await discord_side())
                        times_engine.append(await engine_side())
                    if pairs <= 10 or i % 5 == 4:
                        print(
                            f"  pair {i + 1}/{pairs}: engine {times_engine[-1]:.3f}s "
                            f"discord {times_discord[-1]:.3f}s",
                            flush=True,
                        )
                return {
                    "warmup_discord_s": warm,
                    "request": job.request.to_dict(),
                    **summarize_pairs(times_engine, times_discord),
                }


def discord_overhead(
    model_dir: Path, label: str, pairs: int, generation: dict[str, Any], timeout: float = 600
) -> dict[str, Any]:
    """Median added seconds and ratio of /imagine over the wire vs the engine call alone."""
    raw = asyncio.run(_run(model_dir, pairs, generation, timeout))
    added_ms = raw["median_diff_s"] * 1000
    full = label == "full"
    passed = added_ms < 150 and (raw["median_ratio"] <= 1.03 if full else True)
    data = {
        **raw,
        "model": label,
        "generation": generation,
        "median_added_ms": added_ms,
        "median_engine_s": raw["median_a_s"],
        "median_discord_s": raw["median_b_s"],
        "target": "< 150 ms added" + ("; ratio <= 1.03" if full else ""),
        "pass": passed,
        "load": load_average(),
    }
    print(
        f"  {label}: added {added_ms:.0f} ms (median of pair differences), "
        f"ratio {raw['median_ratio']:.3f}, engine {median(raw['times_a_s']):.3f}s"
    )
    record(f"discord_overhead_{label}", data)
    return data
