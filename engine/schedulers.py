"""Scheduler factory: the sampler names users know from other tools, mapped to diffusers classes."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler class name plus the config overrides that make it a named sampler."""

    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)


# Plain samplers say so explicitly: a fine-tune saved with a Karras scheduler must not turn
# "Euler" into "Euler Karras" through the inherited config.
NO_KARRAS: dict[str, Any] = {"use_karras_sigmas": False}

# Names follow the most used web UI, so settings and PNG metadata read the same in both tools.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "DPM++ 2M Karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "DPM++ SDE Karras": SchedulerSpec("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE Karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "Euler": SchedulerSpec("EulerDiscreteScheduler", NO_KARRAS),
    "Euler a": SchedulerSpec("EulerAncestralDiscreteScheduler"),
    "DDIM": SchedulerSpec("DDIMScheduler"),
    "UniPC": SchedulerSpec("UniPCMultistepScheduler", NO_KARRAS),
    "LMS": SchedulerSpec("LMSDiscreteScheduler", NO_KARRAS),
    "Heun": SchedulerSpec("HeunDiscreteScheduler", NO_KARRAS),
    "PNDM": SchedulerSpec("PNDMScheduler", {"skip_prk_steps": True}),
    "LCM": SchedulerSpec("LCMScheduler"),
    "TCD": SchedulerSpec("TCDScheduler"),
}
DEFAULT_SCHEDULER = "DPM++ 2M Karras"
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)
# Samplers that draw fresh noise each step: reproducible only with a seeded generator.
STOCHASTIC = frozenset({"Euler a", "DPM++ SDE Karras", "DPM++ 2M SDE Karras", "LCM", "TCD"})


def canonical_scheduler_name(name: str) -> str:
    """Return the canonical spelling of a sampler name (case and spacing insensitive)."""
    if not name or not name.strip():
        raise ValueError(f"scheduler: empty name; choose one of: {', '.join(SCHEDULER_NAMES)}")
    wanted = " ".join(name.split()).lower()
    for known in SCHEDULER_NAMES:
        if known.lower() == wanted:
            return known
    raise ValueError(
        f"scheduler: unknown sampler {name!r}; choose one of: {', '.join(SCHEDULER_NAMES)}"
    )


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """Build the named scheduler from a model's scheduler config (keeps betas and prediction type)."""
    spec = SCHEDULERS[canonical_scheduler_name(name)]
    import diffusers  # here, not at import: requests and settings stay importable without torch

    cls = getattr(diffusers, spec.class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    config = {k: v for k, v in dict(base_config).items() if k in accepted}
    config.update(spec.overrides)
    return cls.from_config(config)
