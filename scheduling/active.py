"""Which job each worker runs now, shared by the job runner (writes) and the announcer (reads)."""

from __future__ import annotations

from collections.abc import Iterator

from scheduling.workers.base import JobRun


class ActiveRuns:
    """The job on each busy worker, and the training in progress (listed between its slices)."""

    def __init__(self) -> None:
        self._by_worker: dict[str, JobRun] = {}
        self.training: JobRun | None = None

    def start(self, worker: str, run: JobRun) -> None:
        """Record that `worker` runs `run` now."""
        self._by_worker[worker] = run

    def end(self, worker: str) -> None:
        """`worker` runs nothing now."""
        self._by_worker.pop(worker, None)

    def on(self, worker: str) -> JobRun | None:
        """The job `worker` runs now, or None."""
        return self._by_worker.get(worker)

    def worker_of(self, job_id: int) -> str | None:
        """The name of the worker running this job, or None."""
        return next((name for name, run in self._by_worker.items() if run.job.id == job_id), None)

    def __iter__(self) -> Iterator[JobRun]:
        """The jobs on workers now (a training between its slices is not among them)."""
        return iter(list(self._by_worker.values()))

    def __len__(self) -> int:
        return len(self._by_worker)

    def all(self) -> list[JobRun]:
        """Every running job: the training (also between its slices) and the ones on workers."""
        runs: list[JobRun] = []
        for run in (self.training, *self._by_worker.values()):
            if run is not None and all(run is not seen for seen in runs):
                runs.append(run)
        return runs
