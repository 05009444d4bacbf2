"""The scheduler as the bot and the command line build it: one local engine thread by default."""

from __future__ import annotations

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from scheduling.disk import SpaceGuard
from scheduling.job_runner import ImagePath
from scheduling.jobs import JobStore
from scheduling.scheduler import Scheduler
from scheduling.training_runner import TrainerFactory
from scheduling.workers.base import Worker
from scheduling.workers.core import FaultInjector
from scheduling.workers.local import LocalWorker


def build_scheduler(
    generator: TextToImageGenerator,
    store: JobStore,
    config: QueueConfig | None = None,
    *,
    workers: list[Worker] | None = None,
    fault_injector: FaultInjector | None = None,
    image_path: ImagePath | None = None,
    trainer_factory: TrainerFactory | None = None,
    deliver: bool = False,
    affinity_window: int = 3,
    space: SpaceGuard | None = None,
) -> Scheduler:
    """A scheduler serving `workers`, or one LocalWorker on `generator` when none are given.

    ``deliver=True``: a front end delivers outcomes and marks them delivered itself (jobs stay
    'finished' until then); otherwise outcomes count as delivered at once.
    """
    config = config or QueueConfig()
    if workers is None:
        workers = [LocalWorker(generator, config, fault_injector=fault_injector)]
    return Scheduler(
        generator,
        store,
        config,
        workers=workers,
        image_path=image_path,
        trainer_factory=trainer_factory,
        deliver=deliver,
        affinity_window=affinity_window,
        space=space,
    )
