"""/train: an admin attaches images; a LoRA trains between /imagine jobs and is registered."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from botcore.acks import later, recorded_defer
from botcore.progress import Update
from cogs._checks import UserFacingError, admin_only
from cogs._job_views import cancel_view
from cogs._train_dataset import stage_dataset
from cogs._train_messages import (
    ended_update,
    finished_update,
    queued_text,
    status_line,
    train_name,
)
from cogs._train_setup import (
    PROOF_SEED,
    TrainChoices,
    alt_caption,
    choose_settings,
    proof_seed,
    train_spec,
)
from cogs._uploads import check_trigger_word, check_uploads
from engine.train_lora import TrainConfig
from engine.training.recipe import read_recipe
from scheduling.disk import is_disk_full
from scheduling.events import JobEvent
from scheduling.jobs import JobRecord, NewJob
from storage import AlreadyExistsError, safe_name
from storage.files import atomic_write_bytes
from storage.loras import check_lora_name

if TYPE_CHECKING:
    from bot import ImageBot

log = logging.getLogger(__name__)

TRAIN_EDIT_INTERVAL_S = 10.0  # training runs for minutes: one message edit every ~10 s
MIN_CHECKPOINT_EVERY = 10


def checkpoint_interval(steps: int) -> int:
    """Steps between checkpoints: about four per run, not more often than every 10 steps."""
    return max(MIN_CHECKPOINT_EVERY, steps // 4)


PROOF_NAME = "before-after.png"  # kept beside the LoRA, so a retried delivery reuses it


def is_training_leftover(folder: Path) -> bool:
    """Whether a folder holds only what a LoRA training writes (checkpoints, final, temp dirs)."""
    for entry in folder.iterdir():
        if entry.name == PROOF_NAME and entry.is_file():
            continue  # the finished message's before/after picture, written by this cog
        trainer_made = entry.name == "final" or entry.name.startswith(("checkpoint-", "."))
        if not (entry.is_dir() and trainer_made):
            return False
    return True


class Train(commands.Cog):
    """Admins train new styles (LoRA adapters) from a handful of images."""

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.edit_interval = max(TRAIN_EDIT_INTERVAL_S, bot.messenger.interval)
        self._preparing: set[str] = set()  # names (casefolded) whose images are being checked

    async def cog_load(self) -> None:
        """Register the final message of trainings; fail LoRAs left 'training' without a job."""
        self.bot.outbox.register("train", self.final_update)
        try:
            training = await self.bot.storage.loras.list_loras(status="training")
            if not training:
                return
            jobs = await self.bot.storage.unfinished_jobs()
            alive = {train_name(job).casefold() for job in jobs if job.kind == "train"}
            for lora in training:
                if lora.name.casefold() not in alive:
                    log.warning("LoRA %s was training but has no job any more; failed", lora.name)
                    await self.bot.storage.loras.set_lora_status(lora.name, "failed")
        except Exception:
            log.exception("could not check LoRAs left in training")

    @app_commands.command(name="train", description="Train a new style (LoRA) from 4-10 images")
    @app_commands.describe(
        name="Name of the new LoRA (letters, digits, '_', '-', '.')",
        trigger="One word that calls up the style in prompts, e.g. zxqstyle",
        image1="Training image (PNG, JPEG, WebP, BMP or GIF)",
        image2="Training image",
        image3="Training image",
        image4="Training image",
        image5="Training image",
        image6="Training image",
        image7="Training image",
        image8="Training image",
        image9="Training image",
        image10="Training image",
        steps="Training steps (more = slower, stronger)",
        rank="LoRA rank (higher = bigger file, more detail)",
        caption="Caption for images without alt text; {trigger} marks the trigger word",
        learning_rate="Learning rate (default: the model's recipe; 0.000001 to 0.01)",
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)  # listed to admins; still checked
    @admin_only()
    async def train(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 64],
        trigger: app_commands.Range[str, 1, 40],
        image1: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None,
        image6: discord.Attachment | None = None,
        image7: discord.Attachment | None = None,
        image8: discord.Attachment | None = None,
        image9: discord.Attachment | None = None,
        image10: discord.Attachment | None = None,
        steps: app_commands.Range[int, 1, 20000] | None = None,
        rank: app_commands.Range[int, 1, 128] | None = None,
        caption: app_commands.Range[str, 1, 300] | None = None,
        learning_rate: float | None = None,
    ) -> None:
        """Check everything, store the images, queue the training and report where it stands."""
        bot = self.bot
        settings = bot.bot_settings
        given = (image1, image2, image3, image4, image5, image6, image7, image8, image9, image10)
        attachments = [a for a in given if a is not None]
        name = name.strip()
        try:
            check_lora_name(name)
        except ValueError as exc:
            raise UserFacingError(f"That name cannot be used: {exc}.") from None
        trigger_word = check_trigger_word(trigger)
        bot.executor.check_room()  # a full disk refuses before the images are stored
        choices = await self._choices(steps, rank, learning_rate, caption)
        uploads, left_out = check_uploads(
            attachments, max_mb=settings.max_attachment_mb, min_images=settings.train_min_images
        )
        key = name.casefold()
        if key in self._preparing or await bot.storage.loras.get_lora(name) is not None:
            raise UserFacingError(
                f"A LoRA named `{name}` already exists (or is being set up); choose another name."
            )
        output_dir = bot.storage.files.lora_path(name)
        if output_dir.exists() and any(output_dir.iterdir()):
            if not is_training_leftover(output_dir):
                raise UserFacingError(
                    f"Files of an earlier LoRA named `{name}` are still on disk; choose another "
                    "name (or ask the host to remove that folder)."
                )
            # A deleted LoRA's checkpoints: a new run must not resume from them.
            log.info("removing the leftovers of a deleted training in %s", output_dir)
            await asyncio.to_thread(shutil.rmtree, output_dir)
        folder = (Path(settings.train_data_dir) / safe_name(name)).resolve()
        config = self._config(folder / "dataset", output_dir, name, trigger_word, choices)
        captions = [alt_caption(upload.attachment, trigger_word) for upload in uploads]

        self._preparing.add(key)
        job: JobRecord | None = None
        try:
            async with recorded_defer(bot.storage, interaction, ephemeral=True) as ack:
                reasons, used = await stage_dataset(
                    uploads,
                    captions,
                    folder,
                    config,
                    max_mb=settings.max_attachment_mb,
                    min_images=settings.train_min_images,
                    left_out=left_out,
                )
                config = replace(config, sample_prompt=used[0])
                job = await self._register_and_submit(interaction, config)
                await ack.forget()
                await interaction.followup.send(
                    queued_text(job, config, used, reasons), ephemeral=True
                )
        except BaseException:
            if job is None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self._preparing.discard(key)

    # ----- the steps of /train -----------------------------------------------------------
    async def _choices(
        self,
        steps: int | None,
        rank: int | None,
        learning_rate: float | None,
        caption: str | None,
    ) -> TrainChoices:
        """The options given, else the model's recipe, else the bot's defaults; bad → refusal."""
        bot = self.bot
        settings = bot.bot_settings
        try:
            recipe = await asyncio.to_thread(read_recipe, bot.config.model.model_id)
        except ValueError as exc:
            log.error("bad training recipe: %s", exc)
            raise UserFacingError(
                f"This model's training recipe is broken, so /train cannot run: {exc}. "
                "Please tell the host."
            ) from None
        return choose_settings(
            recipe,
            steps=steps,
            rank=rank,
            learning_rate=learning_rate,
            caption=caption,
            default_steps=settings.train_default_steps,
            max_steps=settings.train_max_steps,
            max_rank=settings.train_max_rank,
            default_resolution=bot.engine_door.native_size()[0],
        )

    def _config(
        self,
        dataset_dir: Path,
        output_dir: Path,
        name: str,
        trigger_word: str,
        choices: TrainChoices,
    ) -> TrainConfig:
        """The training settings, checked now so a bad value is refused before queueing."""
        bot = self.bot
        try:
            return TrainConfig(
                dataset_dir=dataset_dir,
                output_dir=output_dir,
                model=bot.config.model.model_id,
                name=name,
                trigger_word=trigger_word,
                caption_template=choices.caption_template,
                max_steps=choices.max_steps,
                rank=choices.rank,
                lr=choices.lr,
                resolution=choices.resolution,
                seed=PROOF_SEED,
                checkpoint_every=checkpoint_interval(choices.max_steps),
                # The finished message shows a before/after pair made with /imagine's own
                # settings instead of the trainer's sample image.
                sample_steps=0,
            )
        except ValueError as exc:
            raise UserFacingError(f"Invalid training setting: {exc}") from None

    async def _register_and_submit(
        self, interaction: discord.Interaction, config: TrainConfig
    ) -> JobRecord:
        """Reserve the name in the LoRA table (status training) and queue the training job."""
        bot = self.bot
        name = config.name
        try:
            await bot.storage.loras.add_lora(
                name,
                path=str(config.output_dir / "final"),
                owner_id=interaction.user.id,
                trigger_word=config.trigger_word,
                rank=config.rank,
                base_model=bot.engine_door.resident_model or config.model,
                base_width=bot.engine_door.resident_width,
                status="training",
            )
        except AlreadyExistsError:
            raise UserFacingError(
                f"A LoRA named `{name}` already exists; choose another name."
            ) from None
        reference = {
            "channel_id": interaction.channel_id,
            "nsfw_channel": bool(getattr(interaction.channel, "is_nsfw", lambda: False)()),
        }
        try:
            new = NewJob(
                user_id=interaction.user.id,
                work=train_spec(config),
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                reference=reference,
            )
            return await bot.executor.submit(new, admin=True)
        except BaseException:
            await later(lambda: bot.storage.loras.delete_lora(name), f"free the LoRA name {name}")
            raise

    # ----- job events --------------------------------------------------------------------
    async def final_update(self, job: JobRecord, data: dict[str, Any] | None) -> Update:
        """The last message of a training (outbox builder); the LoRA's status is already stored."""
        name = train_name(job)
        data = data or {}
        if job.status in ("failed", "cancelled"):
            return ended_update(job, name, data)
        return finished_update(job, name, data, await self._before_after(job, name, data))

    @commands.Cog.listener()
    async def on_job_event(self, event: JobEvent) -> None:
        """Show a training's progress in its message (its outcome goes through the outbox)."""
        job = event.job
        if job.kind != "train":
            return
        line = status_line(event, train_name(job))
        if line is not None:
            await self._update(job, line)

    def _has_target(self, job: JobRecord) -> bool:
        return bool(job.reference.get("token") or job.reference.get("channel_id") or job.channel_id)

    async def _update(self, job: JobRecord, content: str) -> None:
        if self._has_target(job):
            await self.bot.messenger.update(
                job, Update(content=content, view=cancel_view(job.id)), self.edit_interval
            )

    async def _before_after(
        self, job: JobRecord, name: str, data: dict[str, Any]
    ) -> tuple[str, bytes] | None:
        """The sample prompt and a PNG of it without and with the new LoRA (None on failure)."""
        spec = job.train
        prompt = spec.sample_prompt or ""
        weights = data.get("weights_path")
        if not prompt or not weights:
            return None
        size = spec.resolution or 512
        seed = proof_seed(spec)
        # Made once and kept beside the LoRA: a delivery retried after a failure or a restart
        # shows the same picture without generating it again.
        saved = Path(spec.output_dir or Path(weights).parent) / PROOF_NAME
        try:
            return prompt, await asyncio.to_thread(saved.read_bytes)
        except OSError:
            pass
        try:
            png = await self.bot.engine_door.before_after_png(prompt, seed, size, weights, name)
            await asyncio.to_thread(atomic_write_bytes, saved, png)
        except Exception as exc:
            if is_disk_full(exc):  # the LoRA is ready all the same; no traceback for a full disk
                log.warning("no before/after images of LoRA %s: %s", name, exc)
            else:
                log.exception("could not make the before/after images of LoRA %s", name)
            return None
        return prompt, png


async def setup(bot: ImageBot) -> None:
    """Load the cog."""
    await bot.add_cog(Train(bot))
