"""Which waiting job a free worker takes: fair order, bent a little for what a worker holds.

A job may overtake the ones ahead of it (at most `window` places back) when a free worker
already holds what it needs: its base model resident (saves unloading one model and loading
another), or, with several workers, its LoRA loaded. A job that was overtaken `window` times is
never overtaken again, so fairness bounds the batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scheduling.jobs import JobRecord

NEEDS_SWITCH, FITS, HOLDS_LORA = 0, 1, 2


def job_model(job: JobRecord) -> str | None:
    """The model name a generate job runs on (None: any model, e.g. a training)."""
    if job.kind != "generate":
        return None
    return job.request.model or None


def worker_model(worker: Any) -> str | None:
    """The model resident on a worker, or None when it does not say."""
    return getattr(worker, "resident_model", None) or None


def lora_key(job: JobRecord) -> str:
    """The LoRA a job applies through /lora use (affinity key across workers)."""
    if job.kind != "generate":
        return ""
    return job.request.lora or ""


def score(job: JobRecord, worker: Any, loras: bool) -> int:
    """How well a worker suits a job: NEEDS_SWITCH, FITS or HOLDS_LORA."""
    model, resident = job_model(job), worker_model(worker)
    if model is not None and resident is not None and model.lower() != resident.lower():
        return NEEDS_SWITCH
    key = lora_key(job)
    return HOLDS_LORA if loras and key and key in worker.held_loras else FITS


def _positive(job: JobRecord, worker: Any, value: int) -> bool:
    """Whether a score is earned by something held (not just 'no model asked for')."""
    if value == HOLDS_LORA:
        return True
    model, resident = job_model(job), worker_model(worker)
    return value == FITS and model is not None and resident is not None


def _best(job: JobRecord, free: Sequence[Any], loras: bool, wanted: set[str]) -> tuple[Any, int]:
    """The free worker that suits a job best; ties go to one holding nothing others want."""
    scored = [(score(job, w, loras), w) for w in free]
    top = max(value for value, _ in scored)
    tied = [w for value, w in scored if value == top]

    def clash(worker: Any) -> bool:
        resident = (worker_model(worker) or "").lower()
        return bool(worker.held_loras & wanted) or resident in wanted

    return next((w for w in tied if not clash(w)), tied[0]), top


def pick(
    head: Sequence[JobRecord],
    free: Sequence[Any],
    overtaken: dict[int, int],
    window: int,
    loras: bool,
) -> tuple[int, Any]:
    """Index into `head` (fair order) of the job to run and the worker to run it on.

    `overtaken` counts per job id how often it was passed over and is updated here; `loras`
    turns on LoRA affinity (only worth it with several workers).
    """
    wanted = {lora_key(j) for j in head[1:]} | {(job_model(j) or "").lower() for j in head[1:]}
    wanted.discard("")
    worker, best = _best(head[0], free, loras, wanted)
    ceiling = HOLDS_LORA if loras else FITS
    if best >= ceiling:
        return 0, worker
    for index, job in enumerate(head[1 : window + 1], start=1):
        if any(overtaken.get(ahead.id, 0) >= window for ahead in head[:index]):
            break  # a job ahead was passed over enough: fair order wins
        candidate, value = _best(job, free, loras, set())
        if value > best and _positive(job, candidate, value):
            for skipped in head[:index]:
                overtaken[skipped.id] = overtaken.get(skipped.id, 0) + 1
            return index, candidate
    return 0, worker
