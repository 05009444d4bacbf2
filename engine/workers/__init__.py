"""Workers: what runs jobs on one device. ``local`` (the engine thread) or ``ray`` (one actor per GPU).

Nothing here imports Ray; ``engine.workers.ray_backend`` does, and only when that backend is chosen.
"""

from engine.workers.base import JobRun, ProgressSink, Worker, WorkerInfo, WorkerLost
from engine.workers.local import LocalWorker

__all__ = ["JobRun", "LocalWorker", "ProgressSink", "Worker", "WorkerInfo", "WorkerLost"]
