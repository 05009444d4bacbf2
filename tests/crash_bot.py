"""A child process for the crash campaign: the real bot against a fake Discord on 127.0.0.1.

python -m tests.crash_bot PORT TOKEN APP_DATA MODEL_DIR GUILD_ID — runs until SIGKILLed.
Logs at INFO to stderr in the bot's format (tests/soak.py reads it); settings come from the
environment too (BOT_UPLOAD_TIMEOUT_S, QUEUE_PER_USER_CAP, ...); CRASH_BOT_DEBUG=name,name
puts those loggers at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path


async def serve(port: int, token: str, data: Path, model: Path, guild_id: int) -> None:
    """Point discord.py at the fake, build the bot on the tiny model and run it."""
    import discord.gateway
    import discord.http
    import yarl
    from pydantic import SecretStr

    from bot import build
    from botcore.settings import BotSettings, DiscordSettings
    from storage import StorageSettings
    from tests.conftest import tiny_config

    discord.http.Route.BASE = f"http://127.0.0.1:{port}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"ws://127.0.0.1:{port}/gateway")
    config = tiny_config(model, num_inference_steps=3)
    # No previews: only the result upload carries files.
    config.queue = config.queue.model_copy(update={"progress_interval_s": 0.2, "previews": False})
    bot = await build(
        config,
        BotSettings(cooldown_s=0, train_data_dir=data / "train"),
        DiscordSettings(token=SecretStr(token), dev_guild_id=guild_id),
        StorageSettings(
            db_path=data / "bot.sqlite3", outputs_dir=data / "outputs", lora_dir=data / "loras"
        ),
        guild_ready_timeout=0.05,
    )
    bot.outbox.first_backoff_s = 0.1
    print("ready", flush=True)
    async with bot:
        await bot.start(token)


def main() -> None:
    """Parse the arguments and serve until killed."""
    port, token, data, model, guild = sys.argv[1:6]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in filter(None, os.environ.get("CRASH_BOT_DEBUG", "").split(",")):
        logging.getLogger(name).setLevel(logging.DEBUG)  # e.g. botcore,discord.webhook.async_
    asyncio.run(serve(int(port), token, Path(data), Path(model), int(guild)))


if __name__ == "__main__":
    main()
