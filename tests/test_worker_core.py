"""GenerationCore's out-of-memory ladder reads the rungs from its generator, not a global."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.config import GenerationConfig, QueueConfig
from engine.requests import GenerationRequest, resolve_request
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun
from scheduling.workers.core import GenerationCore, OutOfMemoryExhausted


class OneRungGenerator:
    """Only what the ladder touches: prepare, set_memory_level and its own list of rungs."""

    memory_rungs = ("the only saving",)

    def __init__(self) -> None:
        self.levels: list[int] = []

    def prepare(self, request: GenerationRequest) -> Any:
        return resolve_request(request, GenerationConfig(width=64, height=64), {})

    def set_memory_level(self, level: int) -> None:
        self.levels.append(level)


class Sink:
    def __init__(self) -> None:
        self.notices: list[str] = []

    def progress(self, run: JobRun, step: int, total: int, preview: Any) -> None:
        pass

    def notice(self, run: JobRun, message: str) -> None:
        self.notices.append(message)


def test_ladder_length_and_names_come_from_the_generator() -> None:
    def always_oom(level: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    generator = OneRungGenerator()
    core = GenerationCore(generator, QueueConfig(), always_oom)  # type: ignore[arg-type]
    job = JobRecord(id=1, user_id=1, work=GenerationRequest("a"))
    sink = Sink()
    with pytest.raises(OutOfMemoryExhausted):
        core.run(JobRun(job), sink)
    assert generator.levels == [0, 1]  # one rung, then give up: not the global ladder's length
    assert len(sink.notices) == 1 and "the only saving" in sink.notices[0]
