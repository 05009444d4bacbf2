"""Step caching (DeepCache): full UNet passes only every Nth step; between them the deep features
of the last full pass are reused and only the shallowest branch is recomputed.

An optional extra (`pip install DeepCache`): OPT_STEP_CACHE=auto uses it on a CPU when it is
installed, 0 turns it off and N (2-5) sets the interval (a warning when the package is missing).
It applies to full-quality text-to-image runs only: drafts and img2img/region runs have few steps,
so each reused one weighs more (not measured).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# bench/RESULTS.md, issue 21 item 7: at 3 the demo judge's scores held and the CPU time halved.
AUTO_INTERVAL = 3
BRANCH = 0  # the shallowest skip branch: the most reuse, DeepCache's setting for SD v1.5
MISSING = (
    "OPT_STEP_CACHE={} asks for step caching, but the DeepCache package is not installed: "
    "generating without it (pip install DeepCache, or pip install .[speed])"
)
_warned: set[str] = set()


def installed() -> bool:
    """Whether the DeepCache package can be imported."""
    try:
        import DeepCache  # noqa: F401
    except ImportError:
        return False
    return True


def configured_interval(setting: str, device: str) -> int:
    """The cache interval OPT_STEP_CACHE asks for on `device` (0: off), warning once if missing."""
    if setting == "auto":
        return AUTO_INTERVAL if device == "cpu" and installed() else 0
    interval = int(setting)
    if interval and not installed():
        if setting not in _warned:
            _warned.add(setting)
            log.warning(MISSING.format(setting))
        return 0
    return interval


def one_call_per_step(scheduler: Any, steps: int) -> bool:
    """Whether `scheduler` calls the UNet once per step at distinct timesteps.

    DeepCache counts steps by the timestep's index: a repeated timestep (Heun, DPM++ SDE, PNDM's
    first steps) would be counted wrongly and reuse stale features.
    """
    if getattr(scheduler, "order", 1) != 1:
        return False
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    timesteps = probe.timesteps.tolist()
    return len(set(timesteps)) == len(timesteps)


def run_interval(setting: str, device: str, request: Any) -> int:
    """The interval for one resolved request: 0 for drafts and img2img, upscale and region runs."""
    if request.draft or request.init_image is not None:
        return 0
    return configured_interval(setting, device)


@contextlib.contextmanager
def cached_steps(pipe: Any, interval: int, steps: int) -> Iterator[bool]:
    """Run the block with DeepCache on `pipe` every `interval` steps; yields whether it is on."""
    unet = getattr(pipe, "unet", None)
    if interval < 2 or unet is None or hasattr(unet, "_orig_mod"):  # off, or torch.compile'd
        yield False
        return
    if not one_call_per_step(pipe.scheduler, steps):
        yield False
        return
    from DeepCache import DeepCacheSDHelper

    own = {id(m) for m in unet.modules() if "forward" in vars(m)}  # e.g. accelerate's hooks
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=BRANCH)
    helper.enable()  # per run: the helper's step counter and cached features start afresh
    try:
        yield True
    finally:
        helper.disable()
        # disable() puts the bound methods back as instance attributes: drop them, so the
        # modules are exactly as before (and hold no reference cycle through the helper).
        for module in unet.modules():
            if "forward" in vars(module) and id(module) not in own:
                del module.forward
