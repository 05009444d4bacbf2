"""`python -m engine serve` as a separate process: it answers, and a SIGKILL mid-request is
survived (the client gets an error, the job never runs after the restart, the server answers)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import aiohttp

from tests.api_harness import image_of, post

ROOT = Path(__file__).resolve().parent.parent
PREFIXES = ("MODEL_", "OPT_", "GEN_", "QUEUE_", "WORKERS_", "STORAGE_", "DISCORD_", "BOT_", "API_")
AUTH = aiohttp.BasicAuth("ann", "pw")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
    env.update(
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        OPT_STEP_CACHE="0",
        MODEL_ID=str(model_dir),
        MODEL_DEVICE="cpu",
        MODEL_PRECISION="fp32",
        GEN_WIDTH="64",
        GEN_HEIGHT="64",
        GEN_NUM_INFERENCE_STEPS="3",
        GEN_DRAFT_DEFAULT="off",
        STORAGE_DB_PATH=str(tmp / "bot.sqlite3"),
        STORAGE_OUTPUTS_DIR=str(tmp / "outputs"),
        STORAGE_LORA_DIR=str(tmp / "loras"),
        STORAGE_EMBEDDING_DIR=str(tmp / "embeddings"),
    )
    return env


class Server:
    """One `python -m engine serve` process and the lines of its log."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._want: tuple[str, asyncio.Future[str]] | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if self._want and self._want[0] in line and not self._want[1].done():
                self._want[1].set_result(line)

    async def line_with(self, text: str, timeout: float = 60) -> str:
        """The next log line containing `text`."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._want = (text, future)
        return await asyncio.wait_for(future, timeout)


async def _start(tmp: Path, model_dir: Path, port: int) -> Server:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "serve", "--port", str(port), "--api-auth", "ann:pw",
        cwd=tmp, env=_env(tmp, model_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    server = Server(proc)
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert b"Serving the web-UI API on http://127.0.0.1:" in ready, (ready, server.lines[-20:])
    return server


def _job(db: Path, job_id: int) -> tuple[str, str | None, int, int]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT status, error, attempts, delivered_at IS NOT NULL FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()


async def test_serve_survives_a_kill_while_a_request_waits(tiny_model_dir, tmp_path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    first = await _start(tmp_path, tiny_model_dir, port)
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(http, url, "/sdapi/v1/txt2img", {"prompt": "a cat"}, auth=AUTH)
        assert status == 200 and image_of(body["images"][0]).size == (64, 64)
        assert (await post(http, url, "/sdapi/v1/txt2img", {"prompt": "a"}))[0] == 401

        slow = {"prompt": "a dog", "steps": 150, "n_iter": 2}
        waiting = asyncio.create_task(post(http, url, "/sdapi/v1/txt2img", slow, auth=AUTH))
        line = await first.line_with("api job")
        job_id = int(line.split("api job ")[1].split()[0])
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]
        assert isinstance(outcome, aiohttp.ClientError), outcome  # the client got an error

        second = await _start(tmp_path, tiny_model_dir, port)
        try:
            status, error, attempts, delivered = _job(tmp_path / "bot.sqlite3", job_id)
            assert status == "cancelled" and "restart" in error and delivered
            status, _, body = await post(
                http, url, "/sdapi/v1/txt2img", {"prompt": "a cat", "seed": 1}, auth=AUTH
            )
            assert status == 200, body
            # The job from before the kill never ran again.
            assert _job(tmp_path / "bot.sqlite3", job_id)[:3] == ("cancelled", error, attempts)
        finally:
            second.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.proc.wait(), 60) == 0, second.lines[-20:]
