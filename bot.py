"""Entry point: python bot.py — settings, storage, model, engine thread, cogs, Discord."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import discord
from discord.ext import commands

from botcore.acks import answer_orphaned_acks
from botcore.answer_budget import install_answer_budget
from botcore.outbox import Outbox
from botcore.progress import JobMessenger
from botcore.reconnect import cap_reconnect_backoff
from botcore.redact import install_token_redaction, register_secret
from botcore.settings import (
    MIN_EDIT_INTERVAL_S,
    BotSettings,
    DiscordSettings,
    load_settings,
)
from engine.config import AppConfig, ConfigError
from engine.errors import EngineError
from engine.front_door import EngineDoor
from engine.generator import TextToImageGenerator
from engine.pipeline import resolve_model_source
from scheduling.events import JobEvent
from scheduling.executor import build_scheduler
from scheduling.jobs import JobRecord
from scheduling.scheduler import Scheduler
from storage import Storage, StorageError, StorageSettings
from webapi.context import ApiContext
from webapi.server import ApiRefused, ApiServer, exposure_problem
from webapi.settings import ApiSettings

log = logging.getLogger("bot")

EXTENSIONS = (
    "cogs.imagine",
    "cogs.repaint",
    "cogs.lora",
    "cogs.embedding",
    "cogs.train",
    "cogs.profile",
    "cogs.queue",
    "cogs.history",
    "cogs.admin",
    "cogs.errors",
)
NO_TOKEN = (
    "No Discord bot token found. Create a bot at https://discord.com/developers/applications "
    "(New Application -> Bot -> Reset Token), then put DISCORD_TOKEN=<your token> in a file "
    "named .env next to bot.py (see .env.example)."
)


class ImageBot(commands.Bot):
    """The Discord bot: holds the shared services the cogs use."""

    def __init__(
        self,
        *,
        bot_settings: BotSettings,
        discord_settings: DiscordSettings,
        config: AppConfig,
        storage: Storage,
        generator: TextToImageGenerator,
        executor: Scheduler,
        api_settings: ApiSettings | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("intents", discord.Intents.default())
        # Nothing a user types (a prompt, a LoRA name) may ever ping @everyone, a role or a user;
        # result messages allow exactly their requester.
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, help_command=None, **kwargs)
        install_answer_budget(self)  # a locked database cannot keep an interaction unanswered
        self.bot_settings = bot_settings
        self.discord_settings = discord_settings
        self.config = config
        self.storage = storage
        self.generator = generator
        self.executor = executor
        self.engine_door = EngineDoor(generator, executor.run_on_engine)
        self.api: ApiServer | None = None  # the web-UI HTTP API on the same queue (API_ENABLED)
        if api_settings is not None and api_settings.enabled:
            context = ApiContext(executor, storage, self.engine_door, config, api_settings)
            self.api = ApiServer(context)
        interval = max(MIN_EDIT_INTERVAL_S, config.queue.progress_interval_s)
        self.messenger = JobMessenger(self, storage, interval)
        self.outbox = Outbox(
            self, storage, self.messenger, upload_timeout_s=bot_settings.upload_timeout_s
        )
        self.failed_extensions: list[str] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.pool_grower: Any = None  # Ray: adds workers on PCs that join the cluster
        executor.subscribe(self._on_engine_event)
        executor.subscribe(self.outbox.on_event)

    def _on_engine_event(self, event: JobEvent) -> None:
        self.dispatch("job_event", event)

    async def setup_hook(self) -> None:
        """Load every cog (one failure is logged, not fatal), start the engine, sync commands."""
        for name in EXTENSIONS:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("failed to load %s", name)
                self.failed_extensions.append(name)
        if self.api is not None:  # API jobs from before a restart lost their clients
            await self.api.end_orphans()
        recovered = await self.executor.start()
        if recovered:
            log.info("%d job(s) from before the restart are queued again", recovered)
        if self.api is not None:
            try:
                await self.api.start()
            except OSError as exc:  # e.g. the port is taken: Discord is served all the same
                log.error("the web-UI API could not start: %s", exc)
        # Results finished but not delivered before the restart, and commands acknowledged but
        # never queued, are answered in the background (REST works before the gateway is up).
        self._spawn(self.outbox.resume(), "resume-deliveries")
        self._spawn(answer_orphaned_acks(self, self.storage), "answer-orphaned-acks")
        if self.pool_grower is not None:
            self._spawn(self.pool_grower.run(self.executor), "grow-worker-pool")
        await self.sync_commands()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("background task %s failed", name, exc_info=task.exception())

        task.add_done_callback(done)

    async def sync_commands(self) -> None:
        """Sync slash commands to the development server (instant) or globally."""
        guild_id = self.discord_settings.dev_guild_id
        if guild_id:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to server %s", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (may take up to an hour to appear)", len(synced))

    async def on_ready(self) -> None:
        """Log who we are once connected."""
        log.info("connected as %s to %d server(s)", self.user, len(self.guilds))

    async def close(self) -> None:
        """Stop taking jobs, let the running step finish (its job stays queued), close the DB.

        Deliveries under way get a few seconds; what is left is delivered after the next start.
        """
        if self.api is not None:  # waiting API calls get 503 and their jobs end
            await self.api.stop()
        await self.executor.stop()
        try:
            await self.outbox.wait_idle(timeout=10)
        except asyncio.TimeoutError:
            log.info("%d result(s) will be delivered after the next start", self.outbox.pending)
        await self.outbox.stop()
        for task in list(self._background):
            task.cancel()
        await super().close()


def trainer_factory_for(generator: TextToImageGenerator):
    """A function that builds a slice-wise LoRA trainer for a train job, sharing the pipeline."""

    def factory(job: JobRecord) -> Any:
        from engine.train_lora import LoraTrainer, TrainConfig

        settings = job.train.trainer_settings()
        config = TrainConfig(model=generator.config.model.model_id, **settings)
        return LoraTrainer(config, pipe=generator.pipe, device=generator.device)

    return factory


async def build(
    config: AppConfig,
    bot_settings: BotSettings,
    discord_settings: DiscordSettings,
    storage_settings: StorageSettings,
    api_settings: ApiSettings | None = None,
    **bot_kwargs: Any,
) -> ImageBot:
    """Open storage, load the model on the engine thread's behalf, and assemble the bot."""
    install_token_redaction()
    if discord_settings.token is not None:
        register_secret(discord_settings.token.get_secret_value())
    if api_settings is not None and api_settings.enabled:
        problem = exposure_problem(api_settings)
        if problem is not None:
            raise ApiRefused(problem)
        for password in api_settings.credentials().values():
            register_secret(password)
    cap_reconnect_backoff()
    resolve_model_source(config.model.model_id, config.model.allow_ckpt)  # fail before opening
    generator = TextToImageGenerator(config)
    generator.models.check_sources(config.model.allow_ckpt)
    storage = await Storage.open(storage_settings.db_path, settings=storage_settings)
    try:
        await asyncio.to_thread(generator.load_model)
    except BaseException:
        await storage.close()
        raise
    workers = grower = None
    if config.workers.backend == "ray":
        from scheduling.workers.ray_backend import connect, create_workers
        from scheduling.workers.ray_growth import PoolGrower

        await asyncio.to_thread(connect, config.workers.ray_address)
        workers = await asyncio.to_thread(
            create_workers,
            config,
            count=config.workers.count,
            cache_dir=config.workers.cache_dir,
        )
        if config.workers.count is None:  # one per GPU: PCs that join later get workers too
            grower = PoolGrower(config, cache_dir=config.workers.cache_dir)
    executor = build_scheduler(
        generator,
        storage,
        config.queue,
        image_path=lambda job, index: storage.files.image_path(job.id, index),
        trainer_factory=trainer_factory_for(generator),
        deliver=True,
        workers=workers,
        affinity_window=config.workers.affinity_window,
        space=storage.space,
    )
    bot = ImageBot(
        bot_settings=bot_settings,
        discord_settings=discord_settings,
        config=config,
        storage=storage,
        generator=generator,
        executor=executor,
        api_settings=api_settings,
        **bot_kwargs,
    )
    bot.pool_grower = grower
    return bot


async def run() -> int:
    """Read settings, build the bot and run it until Ctrl-C or SIGTERM."""
    # Logging is on before the settings are read so that a renamed variable's deprecation notice
    # shows; the level comes from BOT_LOG_LEVEL once it is known.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config, discord_settings = settings.config, settings.discord
    bot_settings, storage_settings = settings.bot, settings.storage
    logging.getLogger().setLevel(bot_settings.log_level.upper())
    if discord_settings.token is None or not discord_settings.token.get_secret_value().strip():
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        bot = await build(config, bot_settings, discord_settings, storage_settings, settings.api)
    except (StorageError, EngineError, ApiRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows has no signal handlers in asyncio: Ctrl-C arrives as KeyboardInterrupt there.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with bot:
            runner = asyncio.create_task(bot.start(discord_settings.token.get_secret_value()))
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()
            log.info("shutting down: finishing the current step, keeping waiting jobs")
    except discord.LoginFailure:
        print("error: Discord refused the token; check DISCORD_TOKEN in .env", file=sys.stderr)
        return 2
    except discord.PrivilegedIntentsRequired:
        print(
            "error: this bot needs no privileged intents; check the intents setup", file=sys.stderr
        )
        return 2
    finally:
        await bot.storage.close()
    return 0


def main() -> None:
    """Run the bot and exit with its status."""
    try:
        sys.exit(asyncio.run(run()))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
