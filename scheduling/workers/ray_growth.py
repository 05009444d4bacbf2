"""New nodes in the Ray cluster get workers: the pool grows while the bot runs.

With WORKERS_COUNT empty the pool is one worker per GPU (on a cluster without GPUs, one per
node). A PC that joins with ``ray start --address=...`` adds capacity; the grower notices it
within one poll, starts a worker there and hands it to the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from engine.config import AppConfig
from scheduling.workers.ray_backend import RayWorker, create_workers

if TYPE_CHECKING:
    from scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


def node_capacity(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """Workers each alive node should hold: its GPUs, or one per node on a cluster without GPUs."""
    alive = [node for node in nodes if node.get("Alive")]
    with_gpus = any(node["Resources"].get("GPU", 0) >= 1 for node in alive)
    return {
        node["NodeID"]: int(node["Resources"].get("GPU", 0)) if with_gpus else 1 for node in alive
    }


def placements(capacity: dict[str, int], workers: list[Any]) -> list[str]:
    """The node ids that need one more worker each (none while the pool is as big as wanted).

    A worker whose node died still counts toward the total: Ray restarts it where there is room
    (often on that PC when it comes back), so it must not be replaced twice.
    """
    spare = sum(capacity.values()) - len(workers)
    placed = Counter(getattr(worker, "node_id", None) for worker in workers)
    wanted: list[str] = []
    for node_id, room in capacity.items():
        for _ in range(max(0, room - placed[node_id])):
            if len(wanted) < spare:
                wanted.append(node_id)
    return wanted


class PoolGrower:
    """Polls the cluster and adds a worker on each node with room for one more."""

    def __init__(
        self,
        app_config: AppConfig,
        *,
        cache_dir: str | Path | None = None,
        num_cpus: float = 1,
        interval_s: float = 2.0,
    ) -> None:
        self.app_config = app_config
        self.cache_dir = cache_dir
        self.num_cpus = num_cpus
        self.interval_s = interval_s
        self.starting: list[RayWorker] = []
        self._joins: set[asyncio.Task[None]] = set()

    async def run(self, scheduler: Scheduler) -> None:
        """Grow the scheduler's pool until cancelled."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    nodes = await asyncio.to_thread(ray.nodes)
                    wanted = placements(node_capacity(nodes), [*scheduler.workers, *self.starting])
                    for node_id in wanted:
                        [worker] = await asyncio.to_thread(
                            create_workers,
                            self.app_config,
                            count=1,
                            cache_dir=self.cache_dir,
                            num_cpus=self.num_cpus,
                            node_id=node_id,
                        )
                        log.info("new node %s: starting %s", node_id[:12], worker.name)
                        self.starting.append(worker)
                        task = asyncio.create_task(self._join(scheduler, worker))
                        self._joins.add(task)
                        task.add_done_callback(self._joins.discard)
                except Exception:
                    log.exception("could not check the cluster for new nodes")
        finally:
            for task in list(self._joins):
                task.cancel()
            for worker in self.starting:  # never handed over: they belong to nobody
                ray.kill(worker.handle, no_restart=True)

    async def _join(self, scheduler: Scheduler, worker: RayWorker) -> None:
        await scheduler.add_worker(worker)
        self.starting.remove(worker)
