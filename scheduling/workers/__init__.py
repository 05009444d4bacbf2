"""Workers: what runs jobs on one device. ``local`` (the engine thread) or ``ray`` (one actor per GPU).

Nothing here imports Ray; ``scheduling.workers.ray_backend`` does, and only when that backend is chosen.
"""

from scheduling.workers.base import JobRun, ProgressSink, Worker, WorkerInfo, WorkerLost
from scheduling.workers.local import LocalWorker

__all__ = ["JobRun", "LocalWorker", "ProgressSink", "Worker", "WorkerInfo", "WorkerLost"]
