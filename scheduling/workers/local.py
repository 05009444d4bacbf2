"""The local worker: today's single in-process engine thread that owns the loaded pipeline."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from engine.metadata import save_png
from engine.requests import GenerationResult
from scheduling.disk import saving
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun, ProgressSink, WorkerInfo
from scheduling.workers.core import FaultInjector, GenerationCore

ImagePath = Callable[[JobRecord, int], Path]


class LocalWorker:
    """Runs jobs on one thread of this process, on the generator the bot loaded."""

    supports_training = True
    shares_process = True  # call() runs code beside the bot's own pipeline

    def __init__(
        self,
        generator: TextToImageGenerator,
        config: QueueConfig,
        *,
        fault_injector: FaultInjector | None = None,
        name: str = "local",
    ) -> None:
        self.name = name
        self.generator = generator
        self.core = GenerationCore(generator, config, fault_injector)
        self.held_loras: set[str] = set()  # one worker: affinity has nothing to choose from
        self.jobs_done = 0
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._seconds_per_step: float | None = None

    @property
    def alive(self) -> bool:
        """A thread in this process is always there."""
        return True

    @property
    def resident_model(self) -> str:
        """The model loaded on this worker now (for same-model batching)."""
        return self.generator.model_name

    async def start(self) -> None:
        """Nothing to start: the bot loaded the model already."""

    async def wait_alive(self) -> None:
        """Always alive."""

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the engine thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread, fn, *args)

    async def trainer(self, job: JobRecord, factory: Callable[[JobRecord], Any]) -> OnThread:
        """This process's trainer for the job, built and driven on the engine thread."""
        return OnThread(self, await self.call(factory, job))

    async def generate(
        self, run: JobRun, sink: ProgressSink, image_path: ImagePath | None
    ) -> tuple[GenerationResult, dict[str, Any]]:
        """Make and save the job's images on the engine thread."""
        return await self.call(self._generate_sync, run, sink, image_path)

    def _generate_sync(
        self, run: JobRun, sink: ProgressSink, image_path: ImagePath | None
    ) -> tuple[GenerationResult, dict[str, Any]]:
        result, level = self.core.run(run, sink)

        def save() -> tuple[GenerationResult, dict[str, Any]]:
            result.paths = self._save(run.job, result, image_path)
            return result, self.core.result_data(result, level)

        self.jobs_done += 1
        self._seconds_per_step = result.seconds_per_step
        # A full disk raises ImagesUnsaved: the images stay in memory and save() runs again later.
        return saving(save)

    def _save(
        self, job: JobRecord, result: GenerationResult, image_path: ImagePath | None
    ) -> list[Path]:
        if image_path is None:
            return self.generator.save_images(result.images, prefix=f"job{job.id}")
        paths = []
        for index, (image, text) in enumerate(zip(result.images, result.parameters, strict=True)):
            path = image_path(job, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            paths.append(save_png(image, path, text))
        return paths

    def info(self, current: JobRun | None) -> WorkerInfo:
        """This worker for /admin workers."""
        return WorkerInfo(
            name=self.name,
            node=socket.gethostname(),
            device=str(self.generator.device),
            preset=str(self.generator.preset),
            state="busy" if current is not None else "idle",
            current_job=None if current is None else current.job.id,
            jobs_done=self.jobs_done,
            seconds_per_step=self._seconds_per_step,
        )

    async def close(self) -> None:
        """Wait for the engine thread to end."""
        self.thread.shutdown(wait=True)


class OnThread:
    """A trainer of this process, each call run on its worker's engine thread."""

    def __init__(self, worker: LocalWorker, trainer: Any) -> None:
        self.worker = worker
        self.trainer = trainer

    @property
    def step(self) -> int:
        """The step setup resumed from (0: from scratch)."""
        return int(getattr(self.trainer, "step", 0) or 0)

    async def setup(self) -> None:
        """Load data and model parts, resume from the newest checkpoint."""
        await self.worker.call(self.trainer.setup)

    async def train_steps(self, n: int, cancel: threading.Event) -> Any:
        """Run up to n steps."""
        return await self.worker.call(self.trainer.train_steps, n, cancel)

    async def suspend(self) -> None:
        """Hand the pipeline back to generations."""
        await self.worker.call(self.trainer.suspend)

    async def resume(self) -> None:
        """Make the training adapter active again."""
        await self.worker.call(self.trainer.resume)

    async def finish(self) -> Any:
        """Write the final LoRA."""
        return await self.worker.call(self.trainer.finish)

    async def abort(self) -> None:
        """Stop, keeping the checkpoints."""
        await self.worker.call(self.trainer.abort)
