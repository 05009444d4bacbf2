"""A short soak (the long one is ``python -m bench.soak``): many users' jobs under mixed faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e_harness import World
from tests.soak import Soak, SoakPlan

pytestmark = pytest.mark.slow

# Steady-phase bounds, generous: the figures measured are in bench/RESULTS.md.
RSS_GROWTH_MB = 60.0
FDS_GROWTH = 12


@pytest.mark.timeout(300)
async def test_soak_under_mixed_faults_delivers_every_job_once(
    world: World, tiny_model_dir: Path
) -> None:
    plan = SoakPlan(jobs=60, users=10, lanes_per_user=2, hangs=2, drops=1, kill_at=0.2)
    report = await Soak(world, tiny_model_dir, plan).run()
    print("\n" + report.summary())

    # The faults happened: the bot was killed once and the gateway dropped once (resumed,
    # not identified again: one IDENTIFY per process start), uploads failed and hung.
    assert report.kills == 1 and report.identifies == 2 and report.resumes == 1
    assert (
        report.faults["upload hang"] == plan.hangs
        and report.faults["upload 500"] + report.faults["upload 502"] >= 1
    )
    # Every command was answered and accepted; every accepted job is visible exactly once.
    assert report.sent == plan.jobs and report.accepted == plan.jobs
    assert report.refused == [] and report.unanswered == []
    assert report.lost == [], report.lost
    assert report.duplicated == {}, report.duplicated
    assert report.orphans == []
    # Memory and open files flat over the steady phase (after the restart and a warm-up).
    assert report.steady is not None
    start, end = report.steady
    assert end.rss_mb - start.rss_mb < RSS_GROWTH_MB, report.samples
    assert end.fds - start.fds <= FDS_GROWTH, report.samples
    # No unhandled exception in the log; the errors it has are the injected outage's.
    assert report.problems == [], "\n\n".join(report.problems)
