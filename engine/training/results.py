"""What training reports: progress after a slice, and the files of a finished run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainProgress:
    """Where a training run stands after a slice (or a step, for the progress callback)."""

    step: int
    max_steps: int
    loss: float | None
    avg_loss: float | None
    seconds_per_step: float | None
    done: bool


@dataclass(frozen=True)
class TrainOutput:
    """The files of a finished run and what they hold."""

    output_dir: Path
    weights_path: Path
    kohya_path: Path
    info_path: Path
    sample_path: Path | None
    rank: int
    alpha: float
    sha256: str
    steps: int
    trigger_word: str
    loss_curve: list[float] = field(repr=False)


ProgressFn = Callable[[TrainProgress], None]
