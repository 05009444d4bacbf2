"""A child process for the crash tests: serves jobs from a SQLite store and prints each finish."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from engine.requests import GenerationRequest
from scheduling.jobs import NewJob

USERS = 5
JOBS_PER_USER = 10


def build_executor(storage: Any, model: Path, out: Path) -> Any:
    """The worker's engine; the test that recovers the killed worker's jobs builds the same one."""
    from engine.config import QueueConfig
    from engine.generator import TextToImageGenerator
    from scheduling.executor import build_scheduler
    from tests.conftest import tiny_config

    generator = TextToImageGenerator(tiny_config(model, num_inference_steps=2))
    generator.load_model()
    return build_scheduler(
        generator,
        storage,
        QueueConfig(per_user_cap=JOBS_PER_USER, global_cap=100, progress_interval_s=60),
        image_path=lambda job, i: out / f"job{job.id}-{i}.png",
    )


async def serve(db: Path, model: Path, out: Path, submit: bool) -> None:
    """Open the store, optionally submit 50 jobs from 5 users, then serve until killed."""
    from scheduling.events import Finished
    from storage import Storage

    storage = await Storage.open(db)
    executor = build_executor(storage, model, out)
    executor.subscribe(
        lambda e: print(f"done {e.job.id}", flush=True) if isinstance(e, Finished) else None
    )
    if submit:
        executor.pause()
    await executor.start()
    if submit:
        for user in range(1, USERS + 1):
            for n in range(JOBS_PER_USER):
                await executor.submit(
                    NewJob(
                        user_id=user,
                        work=GenerationRequest(f"a red castle {user} {n}", seed=1000 * user + n),
                    )
                )
        print("submitted", flush=True)
        executor.resume()
    await asyncio.Event().wait()


def main() -> None:
    """Parse arguments and serve forever."""
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--submit", action="store_true")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.db, args.model, args.out, args.submit))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
