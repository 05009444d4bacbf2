"""EngineExecutor: the scheduler with today's single local engine thread as its default worker."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from scheduling.jobs import JobRecord, JobStore
from scheduling.queue import QueueFullError
from scheduling.scheduler import (
    EngineHealth,
    ImagePath,
    QueueSnapshot,
    RunningJob,
    Scheduler,
)
from scheduling.workers.base import JobRun, Worker
from scheduling.workers.core import FaultInjector, OutOfMemoryExhausted
from scheduling.workers.local import LocalWorker

__all__ = [
    "EngineExecutor",
    "EngineHealth",
    "JobRun",
    "OutOfMemoryExhausted",
    "QueueFullError",
    "QueueSnapshot",
    "RunningJob",
]


class EngineExecutor(Scheduler):
    """The fair queue served by workers: one local engine thread unless others are given."""

    def __init__(
        self,
        generator: TextToImageGenerator,
        store: JobStore,
        config: QueueConfig | None = None,
        *,
        image_path: ImagePath | None = None,
        trainer_factory: Callable[[JobRecord], Any] | None = None,
        fault_injector: FaultInjector | None = None,
        deliver: bool = False,
        workers: list[Worker] | None = None,
        affinity_window: int = 3,
    ) -> None:
        """``deliver=True``: a front end delivers outcomes and marks them delivered itself
        (jobs stay 'finished' until then); otherwise outcomes count as delivered at once."""
        config = config or QueueConfig()
        if workers is None:
            workers = [LocalWorker(generator, config, fault_injector=fault_injector)]
        super().__init__(
            generator,
            store,
            config,
            workers=workers,
            image_path=image_path,
            trainer_factory=trainer_factory,
            deliver=deliver,
            affinity_window=affinity_window,
        )

    @property
    def local(self) -> LocalWorker | None:
        """The local worker, when this executor has one."""
        return next((w for w in self.workers if isinstance(w, LocalWorker)), None)

    @property
    def fault_injector(self) -> FaultInjector | None:
        """Test hook of the local worker (called with the memory level before each attempt)."""
        return self.local.core.fault_injector if self.local else None

    @fault_injector.setter
    def fault_injector(self, value: FaultInjector | None) -> None:
        if self.local is None:
            raise RuntimeError("fault injection needs the local worker")
        self.local.core.fault_injector = value

    @property
    def _levels(self) -> dict[tuple[int, int], int]:
        """The memory rung remembered per image size on the local worker."""
        return self.local.core.levels if self.local else {}

    @property
    def _thread(self) -> ThreadPoolExecutor:
        """The local engine thread."""
        if self.local is None:
            raise RuntimeError("no local worker")
        return self.local.thread
