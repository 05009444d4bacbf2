"""The real bot as a child process (tests/crash_bot.py) against a fake Discord: start, watch, kill."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import IO

from tests.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parent.parent


class BotProcess:
    """One bot process at a time: ``start()`` waits for its IDENTIFY, ``kill()`` SIGKILLs it.

    ``log``: a file the child's stdout and stderr (its log, INFO and up) are appended to, across
    restarts; ``None`` discards them. ``env``: variables added to the child's environment
    (settings such as ``BOT_UPLOAD_TIMEOUT_S``).
    """

    def __init__(
        self,
        fake: FakeDiscord,
        guild_id: int,
        data: Path,
        model: Path,
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.fake, self.guild_id, self.data, self.model = fake, guild_id, data, model
        self.log, self.env = log, env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running child's process id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 120.0) -> None:
        """Start the bot and wait until it identified on the fake's gateway (or died)."""
        gateway = self.fake.gateway
        before = gateway.identify_count
        if self.log is not None and self._log_file is None:
            self._log_file = self.log.open("ab")
        out = self._log_file if self._log_file is not None else asyncio.subprocess.DEVNULL
        args = [str(self.fake.port), str(self.fake.token), str(self.data), str(self.model)]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.crash_bot",
            *args,
            str(self.guild_id),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            stdout=out,
            stderr=out,
        )
        self.starts += 1
        identified = asyncio.ensure_future(gateway.wait_identified(before + 1, timeout))
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            done, _ = await asyncio.wait({identified, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            identified.cancel()
            exited.cancel()
        if exited in done:
            raise AssertionError(f"the bot exited with {self.proc.returncode}")
        identified.result()  # the timeout, if that is what ended the wait

    async def kill(self) -> None:
        """SIGKILL the bot (nothing is flushed or closed) and reap it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def close(self) -> None:
        """Kill the bot if it runs and close the log file."""
        await self.kill()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
