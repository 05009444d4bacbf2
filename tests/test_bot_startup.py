"""python bot.py: clear exits without a token or with bad settings, before any model work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DISCORD_", "BOT_", "MODEL_", "GEN_", "OPT_", "QUEUE_", "STORAGE_", "WORKERS_")
        )
    }
    clean.update(env, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "bot.py")],
        cwd=tmp_path,  # no .env here
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_token_it_says_how_to_get_one(tmp_path: Path) -> None:
    proc = run_bot(tmp_path)
    assert proc.returncode == 2
    assert "DISCORD_TOKEN" in proc.stderr and "discord.com/developers" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was opened or created


def test_bad_setting_stops_start_up_naming_it(tmp_path: Path) -> None:
    proc = run_bot(tmp_path, DISCORD_TOKEN="x", GEN_WIDTH="500", BOT_NSFW_MODE="sometimes")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    # Both bad settings are named on one line, each with its value and what it must be.
    assert line.startswith("error: Invalid setting ")
    assert "BOT_NSFW_MODE='sometimes': must be one of" in line
    assert "GEN_WIDTH='500': must be a multiple of 8" in line
    assert "Traceback" not in proc.stderr


def test_a_renamed_setting_still_works_with_one_notice(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BOT_EDIT_INTERVAL_S=oops\n")
    proc = run_bot(tmp_path, BOT_PROGRESS_PREVIEWS="false")
    assert proc.returncode == 2
    assert proc.stderr.count("BOT_PROGRESS_PREVIEWS is deprecated; use QUEUE_PREVIEWS") == 1
    # A bad value under the old name is reported under that name, with the other notices.
    assert "BOT_EDIT_INTERVAL_S='oops'" in proc.stderr.strip().splitlines()[-1]


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_bot(tmp_path, DISCORD_TOKEN="x", MODEL_ID=str(tmp_path / "no-such-model"))
    assert proc.returncode == 2
    assert "model: path not found" in proc.stderr and "Traceback" not in proc.stderr
