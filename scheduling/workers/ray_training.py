"""The bot's side of a training on a Ray worker: files out by sha256, checkpoints back home.

Before setup the dataset and the newest checkpoint in the bot's LoRA folder go to the actor
(once each, by sha256); after every slice the new checkpoints come back and are written into
that folder, so a training whose worker dies resumes on another from its newest checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.training import files
from scheduling.jobs import JobRecord
from scheduling.workers.base import WorkerLost
from scheduling.workers.ray_calls import LOST, get

if TYPE_CHECKING:
    from engine.train_lora import TrainOutput, TrainProgress

log = logging.getLogger(__name__)


class ActorWorker(Protocol):
    """What a RemoteTrainer needs of the bot's handle on an actor (a RayWorker)."""

    name: str
    handle: Any

    @property
    def alive(self) -> bool:
        """Whether the actor answered since it last died."""
        ...

    async def ship(self, file: Path) -> str:
        """Put a file in the actor's cache once, by sha256; its cache name."""
        ...

    def lost(self, exc: BaseException) -> WorkerLost:
        """Mark the actor lost after a failed call; the error to raise."""
        ...


class RemoteTrainer:
    """One training on one worker actor, with the async methods the training runner calls."""

    def __init__(self, worker: ActorWorker, job: JobRecord) -> None:
        self.worker = worker
        self.job = job
        self.params = job.train.trainer_settings()
        self.output_dir = Path(self.params["output_dir"])
        self.step = 0  # where setup resumed (0: from scratch)
        self._copied = -1  # the newest checkpoint step the bot's folder holds

    async def _remote(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            return await get(getattr(self.worker.handle, method).remote(*args), timeout)
        except LOST as exc:
            raise self.worker.lost(exc) from None

    async def setup(self) -> None:
        """Ship the dataset and the newest checkpoint, then build the trainer on the actor."""
        # 1. the dataset, file by file, by sha256
        dataset_dir = Path(self.params["dataset_dir"])
        dataset = {}
        for file in sorted(p for p in dataset_dir.iterdir() if p.is_file()):
            dataset[file.name] = await self.worker.ship(file)
        # 2. the newest complete checkpoint of the bot's folder, if any
        checkpoint = None
        found = await asyncio.to_thread(files.list_checkpoints, self.output_dir)
        if found:
            step, folder = found[-1]
            parts = {p.name: await self.worker.ship(p) for p in sorted(folder.iterdir())}
            checkpoint = (step, parts)
            self._copied = step
        # 3. the trainer on the actor; it resumes from that checkpoint
        args = (self.job.id, self.params, dataset, checkpoint)
        self.step = await self._remote("train_begin", *args)
        log.info("job %s: training on %s from step %d", self.job.id, self.worker.name, self.step)

    async def train_steps(self, n: int, cancel: threading.Event) -> TrainProgress:
        """Run a slice on the actor (forwarding cancel), then copy its checkpoints home."""
        ref = self.worker.handle.train_call.remote(self.job.id, "train_steps", n)
        future = asyncio.wrap_future(ref.future())
        cancel_sent = False
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=0.2)
                if done:
                    status = future.result()
                    break
                if cancel.is_set() and not cancel_sent:
                    cancel_sent = await self._remote("train_cancel", self.job.id, timeout=30)
        except LOST as exc:
            raise self.worker.lost(exc) from None
        await self._copy_checkpoints()
        return status

    async def _copy_checkpoints(self) -> None:
        for step, parts in await self._remote("train_checkpoints", self.job.id, self._copied):
            await asyncio.to_thread(_write_folder, self.output_dir / f"checkpoint-{step}", parts)
            self._copied = step

    async def suspend(self) -> None:
        """Hand the actor's pipeline back to generations."""
        await self._remote("train_call", self.job.id, "suspend")

    async def resume(self) -> None:
        """Make the training adapter active again."""
        await self._remote("train_call", self.job.id, "resume")

    async def finish(self) -> TrainOutput:
        """Write the final LoRA on the actor and copy it (and the last checkpoint) home."""
        from engine.train_lora import TrainOutput

        record = await self._remote("train_call", self.job.id, "finish")
        await self._copy_checkpoints()
        final = self.output_dir / "final"
        parts = await self._remote("train_final", self.job.id)
        await asyncio.to_thread(_write_folder, final, parts)
        await self._remote("train_clear", self.job.id)
        paths = {"weights_path", "kohya_path", "info_path", "sample_path"}
        for key in paths:
            if record.get(key):
                record[key] = final / record[key]
        record["output_dir"] = final
        return TrainOutput(**record)

    async def abort(self) -> None:
        """Stop the training on the actor; nothing to do when the actor died under it."""
        if not self.worker.alive:
            return
        try:
            await self._remote("train_call", self.job.id, "abort", timeout=60)
        except (WorkerLost, asyncio.TimeoutError):
            log.warning("job %s: could not stop the training on %s", self.job.id, self.worker.name)


def _write_folder(target: Path, parts: dict[str, bytes]) -> None:
    """Write the files as `target`, atomically (a reader sees all of them or none)."""
    if target.is_dir():
        return  # written by an earlier attempt: the same step holds the same bytes
    with files.atomic_dir(target) as tmp:
        for name, data in parts.items():
            (tmp / Path(name).name).write_bytes(data)
