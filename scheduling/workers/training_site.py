"""Training inside a worker actor: its files in the actor's cache, its checkpoints read back.

Runs in the actor process (no Ray import here). The bot sends the dataset and the newest
checkpoint by sha256 (they sit in the actor's disk cache), and copies every checkpoint and the
final LoRA back to its own folder, so the bot's disk stays the single record.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

from engine.generator import TextToImageGenerator
from engine.training import files

# What the bot may call on a training; anything else is refused.
CALLS = ("train_steps", "suspend", "resume", "finish", "abort")


class TrainingSite:
    """The trainings of one actor, by job id, each in its own folder under the cache."""

    def __init__(self, cache: Path, generator: TextToImageGenerator) -> None:
        self.cache = cache
        self.generator = generator
        self.trainers: dict[int, Any] = {}
        self.cancels: dict[int, threading.Event] = {}

    def folder(self, job_id: int) -> Path:
        """Where this job's dataset and output live on this actor."""
        return self.cache / "train" / str(job_id)

    def begin(
        self,
        job_id: int,
        params: dict[str, Any],
        dataset: dict[str, Path],
        checkpoint: tuple[int, dict[str, Path]] | None,
    ) -> int:
        """Build the trainer on a fresh folder, resume from the checkpoint given; return its step."""
        from engine.train_lora import LoraTrainer, TrainConfig

        # 1. a fresh folder: whatever an earlier attempt left here is not the record
        root = self.folder(job_id)
        shutil.rmtree(root, ignore_errors=True)
        data, out = root / "dataset", root / "out"
        data.mkdir(parents=True)
        for name, cached in dataset.items():
            shutil.copyfile(cached, data / Path(name).name)
        # 2. the newest checkpoint the bot holds, where the trainer looks for it
        if checkpoint is not None:
            step, parts = checkpoint
            target = out / f"checkpoint-{step}"
            target.mkdir(parents=True)
            for name, cached in parts.items():
                shutil.copyfile(cached, target / Path(name).name)
        # 3. the trainer, on this actor's pipeline (shared with its generations)
        values = {**params, "dataset_dir": data, "output_dir": out}
        config = TrainConfig(model=self.generator.config.model.model_id, **values)
        trainer = LoraTrainer(config, pipe=self.generator.pipe, device=self.generator.device)
        trainer.setup()
        self.trainers[job_id] = trainer
        self.cancels[job_id] = threading.Event()
        return int(trainer.step)

    def call(self, job_id: int, method: str, *args: Any) -> Any:
        """Run one trainer method; train_steps gets this actor's cancel flag for the job."""
        if method not in CALLS:
            raise ValueError(f"not a training call: {method!r}")
        trainer = self.trainers.get(job_id)
        if trainer is None:
            if method == "abort":
                return None  # nothing left to stop (e.g. the actor restarted)
            raise ValueError(f"no training of job {job_id} on this worker")
        if method == "train_steps":
            return trainer.train_steps(int(args[0]), self.cancels[job_id])
        result = getattr(trainer, method)()
        if method in ("finish", "abort"):
            self.trainers.pop(job_id, None)
            self.cancels.pop(job_id, None)
        if method == "finish":
            return _output_record(result)
        return result

    def cancel(self, job_id: int) -> bool:
        """Stop the training's current slice at its next step; False if it does not run here."""
        event = self.cancels.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def checkpoints(self, job_id: int, after: int) -> list[tuple[int, dict[str, bytes]]]:
        """The complete checkpoints newer than step `after`, oldest first, as file bytes."""
        out = self.folder(job_id) / "out"
        return [
            (step, _read_folder(folder))
            for step, folder in files.list_checkpoints(out)
            if step > after
        ]

    def final_files(self, job_id: int) -> dict[str, bytes]:
        """The files of the finished LoRA (final/), to be copied back to the bot."""
        return _read_folder(self.folder(job_id) / "out" / "final")

    def clear(self, job_id: int) -> None:
        """Remove the job's folder once the bot holds everything."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _output_record(output: Any) -> dict[str, Any]:
    """A TrainOutput with its paths as file names (the bot rebuilds them under its folder)."""
    record = dataclasses.asdict(output)
    for key, value in record.items():
        if isinstance(value, Path):
            record[key] = value.name
    return record
