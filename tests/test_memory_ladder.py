"""The memory ladder's GPU rungs on a CPU: fp8 storage, group offload, and the load-time ladder.

No GPU here: the slot is told its device is 'cuda' while every tensor stays on the CPU, and the
step that moves the pipeline (place_on_device) is replaced by one that records what it was asked
and raises torch.cuda.OutOfMemoryError for its first calls, as a small card would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import engine.model_slot
import engine.optimizations
from engine.config import OptimizationConfig
from engine.errors import EngineError
from engine.generator import TextToImageGenerator
from engine.optimizations import (
    FP8_STORAGE,
    GROUP_OFFLOAD,
    MODEL_OFFLOAD,
    SEQUENTIAL_OFFLOAD,
    VAE_SLICING_TILING,
    configured_offloads,
    memory_rungs,
    next_placement_level,
    remove_offload_hooks,
)
from engine.weight_storage import fp8_supported, stored_fp8
from tests.conftest import tiny_config

needs_fp8 = pytest.mark.skipif(not fp8_supported(), reason="this torch has no float8")


class FakePlacement:
    """Stands in for place_on_device: fails the first `failures` calls, then keeps to the CPU."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[dict[str, bool]] = []

    def __call__(self, pipe: Any, opt: Any, device: str) -> list[str]:
        self.calls.append(
            {
                "model": opt.enable_model_cpu_offload,
                "group": opt.enable_group_offload,
                "sequential": opt.enable_sequential_cpu_offload,
                "fp8": stored_fp8(pipe.unet),
            }
        )
        if len(self.calls) <= self.failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        pipe.to("cpu")
        return []


def pretend_cuda(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, failures: int = 0
) -> tuple[TextToImageGenerator, FakePlacement]:
    placement = FakePlacement(failures)
    monkeypatch.setattr(engine.model_slot, "resolve_device", lambda name: "cuda")
    monkeypatch.setattr(engine.model_slot, "place_on_device", placement)
    monkeypatch.setattr(engine.optimizations, "place_on_device", placement)
    cfg = tiny_config(model_dir)
    cfg.optimization = OptimizationConfig(vram_preset="none")
    return TextToImageGenerator(cfg), placement


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_ladder_order_follows_the_measured_cost() -> None:
    rungs = memory_rungs(sdpa=True, fp8=True)
    assert rungs == (
        VAE_SLICING_TILING,
        FP8_STORAGE,
        MODEL_OFFLOAD,
        GROUP_OFFLOAD,
        SEQUENTIAL_OFFLOAD,
        "one image at a time",
    )
    assert FP8_STORAGE not in memory_rungs(sdpa=True)  # offered only where it can help
    # A rung the configuration has already is no rung: it would retry the same placement.
    preset_2gb = OptimizationConfig(enable_group_offload=True, enable_model_cpu_offload=True)
    assert configured_offloads(preset_2gb) == (MODEL_OFFLOAD, GROUP_OFFLOAD)
    skipped = memory_rungs(sdpa=True, fp8=True, skip=configured_offloads(preset_2gb))
    assert skipped == (VAE_SLICING_TILING, FP8_STORAGE, SEQUENTIAL_OFFLOAD, "one image at a time")
    # A load skips the rungs that cannot change what has to fit: VAE slicing, one by one.
    assert next_placement_level(rungs, 0) == 2
    assert next_placement_level(rungs, 2) == 3
    assert next_placement_level(rungs, 4) == 5
    assert next_placement_level(rungs, 5) is None


def test_cpu_ladder_has_no_fp8_rung(tiny_generator: TextToImageGenerator) -> None:
    rungs = tiny_generator.memory_rungs
    assert FP8_STORAGE not in rungs and GROUP_OFFLOAD in rungs
    assert tiny_generator.memory_floor == 0 and tiny_generator.take_load_notice() == ""
    try:
        tiny_generator.set_memory_level(rungs.index(SEQUENTIAL_OFFLOAD) + 1)
        assert not stored_fp8(tiny_generator.pipe.unet)
        assert tiny_generator.pipe.device.type == "cpu"
    finally:
        tiny_generator.set_memory_level(0)


def test_group_offload_hooks_come_off(tiny_model_dir: Path) -> None:
    from diffusers.hooks import apply_group_offloading

    gen = TextToImageGenerator(tiny_config(tiny_model_dir))
    gen.load_model()
    reference = gen.generate("a red circle", seed=5)[0]
    cpu = torch.device("cpu")
    for name in ("unet", "text_encoder", "vae"):
        apply_group_offloading(
            getattr(gen.pipe, name),
            onload_device=cpu,
            offload_device=cpu,
            offload_type="leaf_level",
        )

    def group_hooks() -> int:
        return sum(
            1
            for name in ("unet", "text_encoder", "vae")
            for sub in getattr(gen.pipe, name).modules()
            if getattr(sub, "_diffusers_hook", None) is not None
            and sub._diffusers_hook.get_hook("group_offloading") is not None
        )

    assert group_hooks() > 0
    gen.pipe.remove_all_hooks()
    assert group_hooks() > 0  # diffusers' own removal leaves them: the reason for ours
    remove_offload_hooks(gen.pipe)
    assert group_hooks() == 0
    again = gen.generate("a red circle", seed=5)[0]
    assert np.abs(pixels(again) - pixels(reference)).max() <= 1


@needs_fp8
def test_load_steps_down_until_the_model_fits(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gen, placement = pretend_cuda(monkeypatch, tiny_model_dir, failures=2)
    with caplog.at_level(logging.WARNING, logger="engine"):
        gen.load_model()
    rungs = gen.memory_rungs
    assert rungs[:3] == (VAE_SLICING_TILING, FP8_STORAGE, MODEL_OFFLOAD)
    # As configured, then fp8 storage (level 2, VAE slicing comes with it), then model offload.
    assert [c["fp8"] for c in placement.calls] == [False, True, True]
    assert [c["model"] for c in placement.calls] == [False, False, True]
    assert gen.slot.memory_level == gen.memory_floor == 3
    assert stored_fp8(gen.pipe.unet) and gen.pipe.vae.use_slicing
    assert gen.slot.applied == [
        "memory level 3 at load (VAE slicing and tiling + fp8 weight storage + model CPU offload)"
    ]
    assert "fp8 weight storage + model CPU offload" in caplog.text
    notice = gen.take_load_notice()
    assert "did not fit" in notice and "fp8 weight storage + model CPU offload" in notice
    assert gen.take_load_notice() == ""  # told once
    # The floor holds: asking for less keeps what the load needed, and places nothing again.
    gen.set_memory_level(0)
    assert gen.slot.memory_level == 3 and len(placement.calls) == 3
    gen.set_memory_level(4)  # group offload on top
    assert placement.calls[-1]["group"] and placement.calls[-1]["fp8"]


@needs_fp8
def test_load_that_never_fits_fails_in_words(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    gen, placement = pretend_cuda(monkeypatch, tiny_model_dir, failures=99)
    with pytest.raises(EngineError, match="does not fit in this GPU's memory even with every"):
        gen.load_model()
    assert not gen.loaded
    # As configured, fp8, model offload, group offload, sequential offload: five tries.
    assert len(placement.calls) == 5 and placement.calls[-1]["sequential"]


@needs_fp8
def test_fp8_rung_is_kept_when_stepping_down(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gen, placement = pretend_cuda(monkeypatch, tiny_model_dir)
    gen.load_model()
    assert gen.memory_floor == 0 and gen.take_load_notice() == ""
    fp8_level = gen.memory_rungs.index(FP8_STORAGE) + 1
    assert gen.next_memory_level(1) == fp8_level  # not stored yet: the fp8 rung is a real step
    with caplog.at_level(logging.WARNING, logger="engine"):
        gen.set_memory_level(fp8_level + 1)  # fp8 + model offload
    assert placement.calls[-1] == {"model": True, "group": False, "sequential": False, "fp8": True}
    assert "stay so at lower memory levels" in caplog.text
    assert "fp8 weight storage (unet, vae)" in gen.slot.applied
    gen.set_memory_level(0)
    assert placement.calls[-1]["fp8"] and not placement.calls[-1]["model"]
    assert stored_fp8(gen.pipe.unet)  # one-way: only a reload brings the weights back
    # Climbing again skips the fp8 rung: it would retry what is already in effect.
    assert gen.next_memory_level(fp8_level - 1) == fp8_level + 1
    gen.load_model()
    assert not stored_fp8(gen.pipe.unet)


@needs_fp8
def test_model_stored_in_fp8_at_load_has_no_fp8_rung(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    from engine.weight_storage import store_fp8

    gen, _ = pretend_cuda(monkeypatch, tiny_model_dir)
    configure = engine.model_slot.configure_pipeline

    def configure_and_store(pipe: Any, opt: Any, device: str) -> list[str]:
        # Where the load applies OPT_WEIGHT_STORAGE=fp8: before the ladder is built.
        return configure(pipe, opt, device) + store_fp8(pipe, torch.float32)

    monkeypatch.setattr(engine.model_slot, "configure_pipeline", configure_and_store)
    gen.load_model()
    assert stored_fp8(gen.pipe.unet) and FP8_STORAGE not in gen.memory_rungs
