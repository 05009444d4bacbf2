"""`python -m engine serve`: the web-UI HTTP API alone (no Discord) on the bot's queue and store.

The same pieces as the bot: the settings (MODEL_, GEN_, QUEUE_, STORAGE_, API_ ...; no
DISCORD_TOKEN needed), the SQLite store, the durable fair scheduler and its local worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import SecretStr, ValidationError

from botcore.redact import install_token_redaction, register_secret
from engine.config import SECTIONS, AppConfig, ConfigError
from engine.errors import EngineError
from engine.settings_base import load_sections
from storage import Storage, StorageError, StorageSettings
from webapi.settings import ApiSettings

log = logging.getLogger("webapi.serve")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m engine serve`."""
    p = argparse.ArgumentParser(
        prog="python -m engine serve",
        description="Serve the web-UI HTTP API (/sdapi/v1/...) on the fair queue, without Discord.",
    )
    p.add_argument("--host", default=None, help="address to listen on (default API_HOST)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default API_PORT, 7860)")
    p.add_argument(
        "--api-auth", default=None, help="credentials user:pass[,user2:pass2] (default API_AUTH)"
    )
    p.add_argument(
        "--model", default=None, help="a MODEL_CHOICES name, hub id, folder or file (MODEL_ID)"
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def load(args: argparse.Namespace) -> tuple[AppConfig, StorageSettings, ApiSettings]:
    """The settings of the engine, storage and API, with the command line's overrides."""
    sections = load_sections({**SECTIONS, "storage": StorageSettings, "api": ApiSettings})
    config = AppConfig(**{name: sections[name] for name in SECTIONS})
    if args.model:
        from engine.model_choices import ModelCatalog

        # A MODEL_CHOICES name stands for its source; anything else is a model reference.
        choice = ModelCatalog(config.model.model_id, config.model.choices).find(args.model)
        model_id = choice.source if choice else args.model
        config.model = config.model.model_copy(update={"model_id": model_id})
    api: ApiSettings = sections["api"]
    update = {"host": args.host, "port": args.port}
    if args.api_auth is not None:
        update["auth"] = SecretStr(args.api_auth)
    try:
        api = ApiSettings.model_validate(
            {**api.model_dump(), **{k: v for k, v in update.items() if v is not None}}
        )
    except ValidationError as exc:
        raise ConfigError(f"Invalid option: {exc.errors()[0]['msg']}") from None
    return config, sections["storage"], api


async def serve(config: AppConfig, storage_settings: StorageSettings, api: ApiSettings) -> int:
    """Load the model, open the store, start the scheduler and the API; run until a signal."""
    from engine.front_door import EngineDoor
    from engine.generator import TextToImageGenerator
    from engine.pipeline import resolve_model_source
    from scheduling.executor import build_scheduler
    from webapi.context import ApiContext
    from webapi.server import ApiServer

    resolve_model_source(config.model.model_id, config.model.allow_ckpt)  # fail before opening
    generator = TextToImageGenerator(config)
    generator.models.check_sources(config.model.allow_ckpt)
    storage = await Storage.open(storage_settings.db_path, settings=storage_settings)
    try:
        await asyncio.to_thread(generator.load_model)
        scheduler = build_scheduler(
            generator,
            storage,
            config.queue,
            image_path=lambda job, index: storage.files.image_path(job.id, index),
            deliver=True,  # the API answers each job and marks it delivered
            space=storage.space,  # a nearly full disk refuses new calls (507) as in Discord
        )
        door = EngineDoor(generator, scheduler.run_on_engine)
        server = ApiServer(ApiContext(scheduler, storage, door, config, api))
        await server.end_orphans()
        await scheduler.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
            print(f"Serving the web-UI API on {server.url} (Ctrl-C stops it)", flush=True)
            await stop.wait()
            log.info("shutting down: waiting requests are answered with 503")
        finally:
            await server.stop()
            await scheduler.stop()
    finally:
        await storage.close()
    return 0


def keep_secrets_out_of_the_log(api: ApiSettings) -> None:
    """Redact tokens in every log record, and the API's passwords by value."""
    install_token_redaction()
    for password in api.credentials().values():
        register_secret(password)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m engine serve`; return the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config, storage_settings, api = load(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keep_secrets_out_of_the_log(api)
    from webapi.server import exposure_problem

    problem = exposure_problem(api)
    if problem is not None:  # refused before the model loads
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(config, storage_settings, api))
    except (StorageError, EngineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
