"""Secrets never reach the log: one /imagine at DEBUG, every logger (discord.py, aiosqlite, ...)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e_harness import running, wait_result


class Capture(logging.Handler):
    """Everything a handler could write from a record: the formatted line, raw args, tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [self.format(record), repr(record.msg), repr(record.args)]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
        parts.append(record.stack_info or "")
        self.lines.append("\n".join(parts))


@contextmanager
def everything_at_debug() -> Iterator[Capture]:
    """A handler on the root logger with the root (and every library logger) at DEBUG."""
    root = logging.getLogger()
    capture, level = Capture(), root.level
    forced = [
        logging.getLogger(name)
        for name in ("discord", "aiosqlite", "asyncio", "aiohttp", "websockets")
    ]
    levels = [logger.level for logger in forced]
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    for logger in forced:
        logger.setLevel(logging.NOTSET)  # inherit DEBUG from the root
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
        for logger, old in zip(forced, levels, strict=True):
            logger.setLevel(old)


async def test_no_token_in_the_log_at_debug(world, tiny_model_dir: Path) -> None:
    with everything_at_debug() as capture:
        async with running(world, tiny_model_dir):
            it = await world.slash(world.alice, "imagine", {"prompt": "a red castle", "seed": 5})
            await wait_result(it)
    log = "\n".join(capture.lines)
    # The log is really at DEBUG and holds the library lines that carried the token before.
    assert "INTERACTION_CREATE" in log and "INSERT INTO jobs" in log
    assert world.fake.token and it.token
    assert it.token.startswith("aW50ZXJhY3Rpb246")  # a real interaction token's shape
    leaks = [line for line in capture.lines if it.token in line or world.fake.token in line]
    assert leaks == [], f"{len(leaks)} of {len(capture.lines)} records leak a token:\n" + "\n".join(
        line[:300] for line in leaks[:5]
    )
    print(f"{len(capture.lines)} log records for one /imagine at DEBUG")
