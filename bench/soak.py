"""The long soak: python -m bench.soak [--jobs 500] [--users 20] [--drops 3] [--hangs 8].

The soak of tests/test_soak.py (tests/soak.py), longer: hundreds of /imagine from many users
against the real bot in a child process on the tiny model, under 5xx and hung uploads, gateway
drops and a SIGKILL + restart. Prints jobs, faults by kind, lost, duplicated, RSS and open
files at the start and end of the steady phase, and the wall time; records them as "soak".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import WORK, load_average, record


async def _run(plan: Any, model: Path) -> Any:
    from tests.e2e_harness import make_world
    from tests.fake_discord import FakeDiscord
    from tests.soak import Soak

    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        async with FakeDiscord() as fake:
            world = make_world(fake, Path(tmp))
            report = await Soak(world, model, plan).run()
            log = world.tmp / "soak.log"
            kept = WORK / "soak.log"
            kept.write_bytes(log.read_bytes())  # for a look after the run
            db = world.tmp / "soak" / "bot.sqlite3"
            (WORK / "soak.sqlite3").write_bytes(db.read_bytes())
    return report


def soak(jobs: int = 500, users: int = 20, drops: int = 3, hangs: int = 8) -> dict[str, Any]:
    """Run the soak and record its figures; they include whether it passed."""
    from bench.models import tiny_model_dir
    from tests.soak import SoakPlan

    plan = SoakPlan(
        jobs=jobs,
        users=users,
        drops=drops,
        hangs=hangs,
        kill_at=0.2,
        warmup=max(10, jobs // 20),
        drop_down_s=2.0,
    )
    load_before = load_average()
    report = asyncio.run(_run(plan, tiny_model_dir()))
    print(report.summary(), flush=True)
    figures = report.figures()
    figures.update(
        passed=not (report.lost or report.duplicated or report.problems or report.orphans),
        load_before=load_before,
        load_after=load_average(),
        samples=[(s.done, round(s.rss_mb, 1), s.fds) for s in report.samples],
    )
    record("soak", figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the sizes and run the soak; exit 1 if a job was lost or shown twice."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--drops", type=int, default=3, help="gateway drops (2 s outages)")
    parser.add_argument("--hangs", type=int, default=8, help="uploads held past the timeout")
    args = parser.parse_args(argv)
    from bench import quiet, set_threads

    quiet()
    set_threads()
    figures = soak(args.jobs, args.users, args.drops, args.hangs)
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
