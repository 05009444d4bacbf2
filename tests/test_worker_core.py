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
        self.memory_floor = 0
        self.load_notice = ""
        self.model_name = "first"
        self.models = Names()

    def prepare(self, request: GenerationRequest) -> Any:
        return resolve_request(request, GenerationConfig(width=64, height=64), {})

    def set_memory_level(self, level: int) -> None:
        self.levels.append(max(level, self.memory_floor))

    def next_memory_level(self, level: int) -> int:
        return level + 1

    def take_load_notice(self) -> str:
        notice, self.load_notice = self.load_notice, ""
        return notice

    def ensure_model(self, name: str) -> bool:
        self.model_name = name
        self.load_notice = f"{name} needed the only saving to load"
        return True

    def run(self, resolved: Any, **kwargs: Any) -> str:
        return "images"


class Names:
    def resolve(self, name: str) -> str:
        return name


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


def test_load_notice_goes_out_once_with_the_first_job() -> None:
    generator = OneRungGenerator()
    generator.load_notice = "first needed the only saving to load"  # as a start-up load leaves it
    generator.memory_rungs = ("a saving at load", "a saving after")
    generator.memory_floor = 1
    core = GenerationCore(generator, QueueConfig())  # type: ignore[arg-type]
    sinks = [Sink() for _ in range(3)]
    for index, sink in enumerate(sinks):
        job = JobRecord(id=index + 1, user_id=1, work=GenerationRequest("a"))
        result, level = core.run(JobRun(job), sink)
        assert result == "images" and level == 1  # the floor: no attempt below it
    assert sinks[0].notices == ["first needed the only saving to load"]
    assert sinks[1].notices == [] and sinks[2].notices == []
    assert generator.levels == [1, 1, 1]


def test_load_notice_of_a_switch_goes_with_the_switching_job() -> None:
    generator = OneRungGenerator()
    core = GenerationCore(generator, QueueConfig())  # type: ignore[arg-type]
    first, second = Sink(), Sink()
    job = JobRecord(id=1, user_id=1, work=GenerationRequest("a", model="second"))
    core.run(JobRun(job), first)
    core.run(
        JobRun(JobRecord(id=2, user_id=1, work=GenerationRequest("a", model="second"))), second
    )
    assert len(first.notices) == 2 and "Loading the model second" in first.notices[0]
    assert first.notices[1] == "second needed the only saving to load"
    assert second.notices == []
