"""One generation on one device: progress throttling, previews and the OOM ladder with memory.

Shared by the local engine thread and the Ray actor, so both behave the same.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from engine.config import QueueConfig
from engine.generator import TextToImageGenerator
from engine.requests import GenerationResult, ResolvedRequest
from scheduling.workers.base import JobRun, ProgressSink

log = logging.getLogger(__name__)

# Test hook: called with the memory level before each attempt; may raise an OOM error.
FaultInjector = Callable[[int], None]


class OutOfMemoryExhausted(Exception):
    """Every rung of the out-of-memory ladder failed."""


class GenerationCore:
    """Runs generate jobs on one loaded generator; remembers the memory rung that worked per size."""

    def __init__(
        self,
        generator: TextToImageGenerator,
        config: QueueConfig,
        fault_injector: FaultInjector | None = None,
    ) -> None:
        self.generator = generator
        self.config = config
        self.fault_injector = fault_injector
        self.levels: dict[tuple[int, int], int] = {}

    def run(self, run: JobRun, sink: ProgressSink) -> tuple[GenerationResult, int]:
        """Generate the job's images (blocking); return the result and the memory level used."""
        # 1. resolve the stored request and make its model the resident one
        request = run.job.request
        self.switch_model(run, sink, request.model)
        notice = self.generator.take_load_notice()
        if notice:  # the model needed savings to load (at start-up or just now): say it once
            sink.notice(run, notice)
        resolved = self.generator.prepare(request)
        size = (resolved.width, resolved.height)
        level = max(self.levels.get(size, 0), self.generator.memory_floor)
        progress = self._throttled_progress(run, sink)
        rungs = self.generator.memory_rungs
        # 2. walk down the out-of-memory ladder until an attempt fits
        while True:
            try:
                self.generator.set_memory_level(level)
                if self.fault_injector is not None:
                    self.fault_injector(level)
                if level >= len(rungs):
                    result = self._one_by_one(resolved, progress, run.cancel)
                else:
                    result = self.generator.run(resolved, progress=progress, cancel=run.cancel)
                break
            except torch.cuda.OutOfMemoryError:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if level >= len(rungs):
                    raise OutOfMemoryExhausted(
                        "The GPU ran out of memory even with every saving turned on. "
                        "Try a smaller size, fewer images, or fewer steps."
                    ) from None
                level = self.generator.next_memory_level(level)
                log.warning("job %s: out of memory, memory level %d", run.job.id, level)
                sink.notice(
                    run,
                    f"The GPU ran out of memory; retrying with {rungs[level - 1]} "
                    "(slower, uses less memory).",
                )
        # 3. remember the rung that worked for this size
        if level:
            self.levels[size] = level
        return result, level

    def switch_model(self, run: JobRun, sink: ProgressSink, name: str | None) -> float:
        """Unload the resident model and load the job's one when they differ; return the seconds."""
        generator = self.generator
        if name is None or generator.models.resolve(name) == generator.model_name:
            return 0.0
        started = time.perf_counter()
        sink.notice(run, f"Loading the model {name} (the previous one is unloaded first)…")
        generator.ensure_model(name)
        self.levels.clear()  # the rungs that fit were measured on the other model
        seconds = time.perf_counter() - started
        log.info("job %s: model %s loaded in %.1fs", run.job.id, name, seconds)
        return seconds

    def result_data(self, result: GenerationResult, level: int) -> dict[str, Any]:
        """The JSON-friendly record of a result (paths are added by whoever saves the images)."""
        return {
            "seeds": result.seeds,
            "paths": [str(p) for p in result.paths],
            "parameters": result.parameters,
            "seconds": round(result.seconds, 3),
            "seconds_per_step": round(result.seconds_per_step, 4),
            "warnings": result.warnings,
            "nsfw": result.nsfw,
            "memory_level": level,
            "model": self.generator.model_name,
        }

    def _throttled_progress(self, run: JobRun, sink: ProgressSink) -> Callable[..., None]:
        last_emit = 0.0
        interval = self.config.progress_interval_s

        def progress(step: int, total: int, latents: Any) -> None:
            nonlocal last_emit
            run.step, run.total = step, total
            now = time.monotonic()
            if step < total and now - last_emit < interval:
                return
            last_emit = now
            preview = None
            if self.config.previews and step < total:
                preview = self.generator.preview(latents, self.config.preview_size)
            sink.progress(run, step, total, preview)

        return progress

    def _one_by_one(
        self, resolved: ResolvedRequest, progress: Any, cancel: threading.Event
    ) -> GenerationResult:
        parts = [
            self.generator.run(replace(resolved, seeds=(seed,)), progress=progress, cancel=cancel)
            for seed in resolved.seeds
        ]
        first = parts[0]
        return GenerationResult(
            images=[img for p in parts for img in p.images],
            seeds=[s for p in parts for s in p.seeds],
            parameters=[t for p in parts for t in p.parameters],
            request=resolved,
            seconds=sum(p.seconds for p in parts),
            seconds_per_step=first.seconds_per_step,
            warnings=first.warnings,
            nsfw=[f for p in parts for f in p.nsfw],
        )
