"""The soak: many users' /imagine against the real bot (a child process) under mixed faults.

Faults: Discord 5xx (500, or 502 from Cloudflare) on a share of the result uploads, uploads held
past the bot's upload timeout (they land late, after the retry), gateway drops without a
RECONNECT (the TCP connection cut, or closed with 4000) with the gateway refusing connections
for a while, and a SIGKILL of the bot followed by a restart.

Users are lanes: each sends a job, waits for its images, sends the next (at most
``lanes_per_user`` of a user's jobs wait at a time, under the queue's per-user cap, so every
command should be accepted). Commands are held back while the bot is killed or a drop is
injected (a gate), so no interaction is sent into a connection about to die: one that was
would be lost as it is on Discord, which would blur what the soak counts.

Checked after the run: each accepted job has exactly one visible message with its images (a
late repeat of an edit of the same message is counted apart, as a repeated edit, not a
duplicate), the bot's RSS and open files at the start and end of the steady phase (after the
restart and a warm-up), and its log (see :func:`log_problems`). Shared by tests/test_soak.py
(short) and bench/soak.py (long).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from tests.bot_process import BotProcess
from tests.e2e_harness import World, is_result
from tests.fake_discord import InteractionRecord

MB = 1024 * 1024
_DECISION = web.RequestKey("soak.fault", object)


@dataclass
class SoakPlan:
    """How big the soak is and which faults it injects."""

    jobs: int = 80
    users: int = 10
    lanes_per_user: int = 2
    fail_rate: float = 0.1  # share of result uploads answered 500 or 502
    hangs: int = 3  # result uploads held past the bot's upload timeout
    upload_timeout_s: float = 5.0  # BOT_UPLOAD_TIMEOUT_S of the bot (5 is its minimum)
    hang_delay_s: float = 6.0
    drops: int = 1
    drop_down_s: float = 1.0  # the gateway refuses connections this long after each drop
    kill_at: float | None = 0.25  # SIGKILL + restart once this share of the jobs was sent
    warmup: int = 10  # jobs done after the restart before the steady phase's first sample
    seed: int = 24
    result_timeout_s: float = 120.0


@dataclass
class Sample:
    """The bot process's resident memory and open files at one moment."""

    done: int
    rss_mb: float
    fds: int


@dataclass
class SoakReport:
    """What the soak counted; :meth:`summary` prints it."""

    plan: SoakPlan
    sent: int = 0
    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)  # jobs in the database nobody was told of
    repeated_edits: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    identifies: int = 0
    resumes: int = 0
    refused_connections: int = 0
    replayed: int = 0
    samples: list[Sample] = field(default_factory=list)
    steady: tuple[Sample, Sample] | None = None
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    expected_errors: int = 0
    warnings: Counter[str] = field(default_factory=Counter)

    @property
    def delivered(self) -> int:
        """Accepted jobs whose images are visible exactly once."""
        return self.accepted - len(self.lost) - len(self.duplicated)

    def figures(self) -> dict[str, Any]:
        """The report as plain data (for bench/results.json)."""
        start, end = self.steady or (None, None)
        lat = sorted(self.latencies)
        return {
            "jobs": self.plan.jobs,
            "users": self.plan.users,
            "sent": self.sent,
            "accepted": self.accepted,
            "refused": len(self.refused),
            "unanswered": len(self.unanswered),
            "delivered_once": self.delivered,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "orphans": len(self.orphans),
            "repeated_edits": self.repeated_edits,
            "faults": dict(self.faults),
            "sigkills": self.kills,
            "identifies": self.identifies,
            "resumes": self.resumes,
            "refused_connections": self.refused_connections,
            "replayed_dispatches": self.replayed,
            "rss_mb_start": start and round(start.rss_mb, 1),
            "rss_mb_end": end and round(end.rss_mb, 1),
            "rss_mb_max": round(max(s.rss_mb for s in self.samples), 1) if self.samples else None,
            "fds_start": start and start.fds,
            "fds_end": end and end.fds,
            "latency_s_median": round(statistics.median(lat), 3) if lat else None,
            "latency_s_max": round(lat[-1], 3) if lat else None,
            "wall_s": round(self.wall_s, 1),
            "log_problems": len(self.problems),
            "expected_log_errors": self.expected_errors,
            "log_warnings": dict(self.warnings),
        }

    def summary(self) -> str:
        """A few lines for people."""
        f = self.figures()
        return "\n".join(
            [
                f"soak: {f['jobs']} jobs from {f['users']} users in {f['wall_s']} s: "
                f"accepted {f['accepted']}, delivered once {f['delivered_once']}, "
                f"lost {f['lost']}, duplicated {f['duplicated']}, refused {f['refused']}, "
                f"unanswered {f['unanswered']}, repeated edits {f['repeated_edits']}",
                f"faults: {f['faults']}, SIGKILLs {f['sigkills']}; gateway: identifies "
                f"{f['identifies']}, resumes {f['resumes']}, refused connections "
                f"{f['refused_connections']}, replayed {f['replayed_dispatches']}",
                f"steady phase: RSS {f['rss_mb_start']} -> {f['rss_mb_end']} MB "
                f"(max {f['rss_mb_max']}), open files {f['fds_start']} -> {f['fds_end']}; "
                f"delivery latency median {f['latency_s_median']} s, max {f['latency_s_max']} s",
                f"log: {f['log_problems']} problems, {f['expected_log_errors']} expected errors, "
                f"warnings {f['log_warnings']}",
                *[f"lost: {line}" for line in self.lost[:10]],
                *[f"duplicated: {p} x{n}" for p, n in list(self.duplicated.items())[:10]],
                *self.problems[:10],
            ]
        )


def is_result_upload(request: Any) -> bool:
    """The multipart PATCH or POST that carries a result (previews are off in the child)."""
    return request.content_type.startswith("multipart/") and request.method in ("PATCH", "POST")


class UploadChaos:
    """Decides once per result upload: held ('hang'), '500', '502' or nothing."""

    def __init__(self, plan: SoakPlan) -> None:
        self.rng = random.Random(plan.seed)
        self.fail_rate = plan.fail_rate
        step = max(1, plan.jobs // (plan.hangs + 1))
        self.hang_at = {step * (k + 1) for k in range(plan.hangs)}
        self.uploads = 0
        self.decided: Counter[str] = Counter()

    def decide(self, request: Any) -> str | None:
        """The fault for this request (the same answer however often it is asked)."""
        if not is_result_upload(request):
            return None
        if _DECISION not in request:
            self.uploads += 1
            choice = None
            if self.uploads in self.hang_at:
                choice = "hang"
            elif self.rng.random() < self.fail_rate:
                choice = self.rng.choice(("500", "502"))
            request[_DECISION] = choice
            if choice is not None:
                self.decided[choice] += 1
        return request[_DECISION]


class Gate:
    """Commands go out under ``shared()``; a fault that kills the connection takes ``exclusive()``."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._users = 0
        self._closed = False

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Send one command and wait for its acknowledgement."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._closed)
            self._users += 1
        try:
            yield
        finally:
            async with self._changed:
                self._users -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """No command in flight until the block ends."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._closed)
            self._closed = True
            await self._changed.wait_for(lambda: self._users == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._closed = False
                self._changed.notify_all()


def sample(pid: int, done: int) -> Sample:
    """RSS and open files of a process now."""
    proc = psutil.Process(pid)
    return Sample(done, proc.memory_info().rss / MB, proc.num_fds())


def job_rows(db: Path) -> dict[str, tuple[int, str, bool]]:
    """prompt -> (job id, status, delivered), read beside the running bot (WAL)."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT id, status, delivered_at, payload FROM jobs").fetchall()
    return {
        json.loads(payload)["request"]["prompt"]: (job_id, status, delivered is not None)
        for job_id, status, delivered, payload in rows
    }


def visible_copies(world: World, job_id: int) -> int:
    """How many messages people can see carrying this job's images."""
    prefix = f"job{job_id}-"
    return sum(
        1
        for m in world.fake.messages.values()
        if not m.deleted and any(a.filename.startswith(prefix) for a in m.attachments)
    )


def history(record: InteractionRecord) -> str:
    """What the bot did to an interaction, in short (kind, content start, files), for a report."""
    return "; ".join(
        f"{e.kind} {str(e.data.get('content'))[:24]!r} {[f.filename for f in e.files]}"
        for e in record.events
    )


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) (\S+): (.*)$")


def log_problems(text: str, report: SoakReport) -> None:
    """Fill ``report.problems`` with what the log must not hold, and count the rest.

    Expected, and counted apart: discord.py's ERROR "Attempting a reconnect" with the 503
    handshake refusal while the gateway is down (the injected outage; discord.py logs every
    refused try that way). Everything else at ERROR or above, any other traceback, "Task
    exception was never retrieved" and "Exception ignored" lines are problems. WARNINGs (the
    retried deliveries, a timed-out upload) are counted by logger and message start.
    """
    records: list[list[str]] = []
    orphans: list[str] = []
    for line in text.splitlines():
        if _RECORD.match(line):
            records.append([line])
        elif records:
            records[-1].append(line)
        else:
            orphans.append(line)
    for line in orphans:
        if "Traceback" in line or "Exception ignored" in line:
            report.problems.append(f"outside any record: {line}")
    for lines in records:
        match = _RECORD.match(lines[0])
        assert match is not None
        level, name, message = match.groups()
        body = "\n".join(lines)
        if (
            level == "ERROR"
            and name == "discord.client"
            and message.startswith("Attempting a reconnect")
            and "WSServerHandshakeError: 503" in body
        ):
            report.expected_errors += 1
            continue
        if level in ("ERROR", "CRITICAL") or any(
            bad in body for bad in ("Traceback", "never retrieved", "Exception ignored")
        ):
            report.problems.append(body[:2000])
        elif level == "WARNING":
            start = re.sub(r"\d+", "N", " ".join(message.split()[:4]))
            report.warnings[f"{name}: {start}"] += 1


class Soak:
    """One soak run: the fake Discord of ``world``, the bot process, the lanes and the faults."""

    def __init__(self, world: World, model: Path, plan: SoakPlan) -> None:
        self.world, self.plan = world, plan
        self.fake = world.fake
        self.report = SoakReport(plan)
        self.db = world.tmp / "soak" / "bot.sqlite3"
        self.log = world.tmp / "soak.log"
        env = {
            "BOT_UPLOAD_TIMEOUT_S": str(plan.upload_timeout_s),
            "QUEUE_PER_USER_CAP": str(max(3, plan.lanes_per_user)),
            "QUEUE_GLOBAL_CAP": str(max(100, plan.users * plan.lanes_per_user)),
            "OMP_NUM_THREADS": "1",
        }
        self.bot = BotProcess(
            self.fake, world.guild.id, world.tmp / "soak", model, log=self.log, env=env
        )
        self.gate = Gate()
        self.chaos = UploadChaos(plan)
        self.records: dict[int, InteractionRecord] = {}
        self._next = 0
        self._sent = asyncio.Condition()
        self._done = 0
        self._done_since_restart = 0
        self._restarted = plan.kill_at is None
        self._steady_start: Sample | None = None

    async def run(self) -> SoakReport:
        """Run the whole soak and check it; the bot process is gone afterwards."""
        started = time.monotonic()
        fake, plan = self.fake, self.plan
        users = [fake.add_user(f"soaker{n}") for n in range(plan.users)]
        for user in users:
            self.world.guild.add_member(user)
        held = fake.hang(
            10**9, delay=plan.hang_delay_s, route=lambda r: self.chaos.decide(r) == "hang"
        )
        for status in (500, 502):
            fake.fail(
                10**9, status=status, route=lambda r, s=str(status): self.chaos.decide(r) == s
            )
        try:
            await self.bot.start()
            lanes = [self.lane(user) for user in users for _ in range(plan.lanes_per_user)]
            await asyncio.gather(self.disrupt(), *lanes)
            # The bot writes 'delivered' once Discord answered, a moment after the fake recorded
            # the images; the held uploads land late: only then is everything in its final state.
            await self.all_delivered(timeout=plan.result_timeout_s)
            await held.wait_settled(self.chaos.decided["hang"], timeout=plan.hang_delay_s + 30)
            end = sample(self.bot.pid, self._done)
            self.report.samples.append(end)
            if self._steady_start is not None:
                self.report.steady = (self._steady_start, end)
            self.check()
        finally:
            await self.bot.close()
            fake.clear_faults()
        self.report.wall_s = time.monotonic() - started
        log_problems(self.log.read_text(errors="replace"), self.report)
        return self.report

    async def all_delivered(self, timeout: float) -> None:
        """Wait until the database says every accepted job is delivered (or the timeout)."""
        prompts = {f"soak {number}" for number in self.records}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = job_rows(self.db)
            if all(rows.get(p, (0, "", False))[2] for p in prompts):
                return
            await asyncio.sleep(0.05)  # the bot's database has no event to await

    def take(self) -> int | None:
        """The next job number, or None when all were handed out."""
        if self._next >= self.plan.jobs:
            return None
        self._next += 1
        return self._next

    async def lane(self, user: Any) -> None:
        """One of a user's lanes: send a job, wait for its images, repeat."""
        fake, report = self.fake, self.report
        while (number := self.take()) is not None:
            async with self.gate.shared():
                await fake.gateway.wait_live(timeout=120)
                sent = time.monotonic()
                record = await fake.send_slash(
                    user,
                    self.world.general,
                    "imagine",
                    {"prompt": f"soak {number}", "seed": number},
                )
                try:
                    callback = await record.wait_callback(timeout=10)
                except TimeoutError:
                    callback = None
            async with self._sent:
                report.sent += 1
                self._sent.notify_all()
            if callback is None:
                report.unanswered.append(number)
                continue
            if callback.type != 5:
                report.refused.append(str(callback.data.get("content")))
                continue
            report.accepted += 1
            self.records[number] = record
            try:
                result = await record.wait_for(is_result, timeout=self.plan.result_timeout_s)
            except TimeoutError:
                continue  # counted as lost by check()
            report.latencies.append(result.at - sent)
            self.finished()

    def finished(self) -> None:
        """A job's images arrived: count it, and sample the bot at the steady phase's marks."""
        self._done += 1
        if not self._restarted:
            return
        self._done_since_restart += 1
        every = max(1, self.plan.jobs // 10)
        if self._done_since_restart == self.plan.warmup:
            self._steady_start = sample(self.bot.pid, self._done)
            self.report.samples.append(self._steady_start)
        elif self._steady_start is not None and self._done % every == 0:
            self.report.samples.append(sample(self.bot.pid, self._done))

    async def after_sent(self, count: int) -> None:
        """Wait until ``count`` commands were sent."""
        async with self._sent:
            await self._sent.wait_for(lambda: self.report.sent >= count)

    async def disrupt(self) -> None:
        """The SIGKILL and the gateway drops, each once its share of the jobs was sent."""
        plan, fake, report = self.plan, self.fake, self.report
        events: list[tuple[int, str]] = []
        if plan.kill_at is not None:
            events.append((max(1, int(plan.jobs * plan.kill_at)), "kill"))
        for k in range(plan.drops):
            events.append((int(plan.jobs * (0.5 + 0.4 * k / max(1, plan.drops))), "drop"))
        drops = 0
        for at, what in sorted(events):
            await self.after_sent(at)
            async with self.gate.exclusive():
                if what == "kill":
                    await self.bot.kill()
                    report.kills += 1
                    await fake.gateway.wait_closed()
                    await self.bot.start()
                    self._restarted = True
                else:
                    code = (None, 4000)[drops % 2]  # the TCP cut, or a close with 4000
                    drops += 1
                    await fake.drop_gateway(code, down_for=plan.drop_down_s)
                    report.faults[f"gateway drop ({code or 'tcp cut'})"] += 1
            if what == "drop":
                await fake.wait_resumed(timeout=60)

    def check(self) -> None:
        """Count lost, duplicated and orphaned jobs, repeated edits and the gateway's figures."""
        report, gateway = self.report, self.fake.gateway
        rows = job_rows(self.db)
        prompts = set()
        for number, record in self.records.items():
            prompt = f"soak {number}"
            prompts.add(prompt)
            row = rows.get(prompt)
            if row is None or row[1] != "done" or not row[2]:
                report.lost.append(f"{prompt}: {row}")
                continue
            copies = visible_copies(self.world, row[0])
            if copies == 0:
                report.lost.append(f"{prompt}: no visible message; {history(record)}")
            elif copies > 1:
                report.duplicated[prompt] = copies
            report.repeated_edits += max(0, sum(1 for e in record.events if is_result(e)) - 1)
        report.orphans = sorted(set(rows) - prompts)
        for choice, count in self.chaos.decided.items():
            report.faults[f"upload {choice}"] = count
        report.identifies = gateway.identify_count
        report.resumes = gateway.resume_count
        report.refused_connections = gateway.refused
        report.replayed = gateway.replayed
