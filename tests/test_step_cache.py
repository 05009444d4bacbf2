"""Step caching (DeepCache, OPT_STEP_CACHE) in the generator: applied, skipped, and its guards."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import step_cache
from engine.errors import GenerationCancelled
from engine.requests import GenerationRequest
from tests.conftest import tiny_config

PROMPT = "a red circle"


@pytest.fixture
def gen(tiny_generator):
    """The module's tiny generator with OPT_STEP_CACHE put back after each test."""
    before = tiny_generator.config.optimization.step_cache
    yield tiny_generator
    tiny_generator.config.optimization.step_cache = before


def deep_calls(gen, setting: str, steps: int, **request) -> tuple[np.ndarray, int, list[bool]]:
    """Run one request; the picture, how often a deep UNet layer ran, and whether it was wrapped."""
    gen.config.optimization.step_cache = setting
    deep = gen.pipe.unet.down_blocks[-1].resnets[0].conv1  # inside a branch DeepCache reuses
    calls = []
    hook = deep.register_forward_hook(lambda *_: calls.append(1))
    wrapped: list[bool] = []

    def progress(step: int, total: int, latents: object) -> None:
        wrapped.append("forward" in vars(gen.pipe.unet))  # DeepCache sets an instance forward

    try:
        result = gen.run(
            GenerationRequest(prompt=PROMPT, seed=3, num_inference_steps=steps, **request),
            progress=progress,
        )
    finally:
        hook.remove()
    return np.asarray(result.images[0], dtype=np.int16), len(calls), wrapped


def test_interval_skips_the_deep_layers_and_changes_the_picture(gen) -> None:
    """At interval 2 the deep layers run on every other step only, and the picture differs."""
    plain, plain_calls, plain_wrapped = deep_calls(gen, "0", 6)
    cached, cached_calls, cached_wrapped = deep_calls(gen, "2", 6)
    assert plain_calls == 6 and not any(plain_wrapped)
    assert cached_calls == 3 and all(cached_wrapped)
    assert np.abs(plain - cached).max() > 0
    assert "forward" not in vars(gen.pipe.unet)  # unwrapped after the run
    again, _, _ = deep_calls(gen, "2", 6)
    assert np.array_equal(again, cached)  # no state leaks from one run into the next


def test_cancel_unwraps_the_unet(gen) -> None:
    """A run cancelled midway leaves the UNet as it was."""
    gen.config.optimization.step_cache = "3"
    cancel = threading.Event()
    with pytest.raises(GenerationCancelled):
        gen.run(
            GenerationRequest(prompt=PROMPT, seed=1, num_inference_steps=6),
            progress=lambda step, total, latents: cancel.set(),
            cancel=cancel,
        )
    assert "forward" not in vars(gen.pipe.unet)
    _, calls, _ = deep_calls(gen, "0", 4)
    assert calls == 4


def test_drafts_img2img_and_two_call_samplers_are_not_cached(gen, tmp_path: Path) -> None:
    """img2img and samplers that call the UNet twice per step (Heun) run every layer each step."""
    from PIL import Image

    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    _, calls, wrapped = deep_calls(gen, "2", 6, init_image=str(source), strength=1.0)
    assert calls == 6 and not any(wrapped)
    _, calls, wrapped = deep_calls(gen, "2", 3, scheduler="Heun")
    assert calls == 5 and not any(wrapped)  # Heun: 2 calls per step but the last
    resolved = gen.prepare(GenerationRequest(prompt=PROMPT, draft=True))
    assert step_cache.run_interval("2", "cpu", resolved) == 0
    assert step_cache.run_interval("2", "cpu", gen.prepare(GenerationRequest(prompt=PROMPT))) == 2


def test_auto_is_on_for_a_cpu_and_off_for_a_gpu() -> None:
    """OPT_STEP_CACHE=auto: the measured interval on a CPU, off on CUDA; 0 is off."""
    assert step_cache.configured_interval("auto", "cpu") == step_cache.AUTO_INTERVAL
    assert step_cache.configured_interval("auto", "cuda") == 0
    assert step_cache.configured_interval("0", "cpu") == 0
    assert step_cache.configured_interval("4", "cuda") == 4


def test_missing_package_is_off_and_said_once(
    gen, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without DeepCache, auto is silently off and an explicit interval warns once, naming pip."""
    monkeypatch.setitem(sys.modules, "DeepCache", None)  # import DeepCache -> ImportError
    monkeypatch.setattr(step_cache, "_warned", set())
    assert not step_cache.installed()
    with caplog.at_level(logging.WARNING, logger="engine.step_cache"):
        assert step_cache.configured_interval("auto", "cpu") == 0
        assert not caplog.records
        _, calls, wrapped = deep_calls(gen, "3", 3)
        _, calls_again, _ = deep_calls(gen, "3", 3)
    assert calls == calls_again == 3 and not any(wrapped)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "pip install DeepCache" in messages[0], messages


def test_doctor_says_whether_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctor` names the interval, says off and why, or the missing package with its fix."""
    from engine.config import OptimizationConfig
    from engine.doctor import check_step_cache

    on = check_step_cache(OptimizationConfig(step_cache="auto"), "cpu")
    assert on.ok and f"every {step_cache.AUTO_INTERVAL} steps" in on.summary
    gpu = check_step_cache(OptimizationConfig(step_cache="auto"), "cuda")
    assert gpu.ok and gpu.summary == "off (auto on cuda)"
    monkeypatch.setitem(sys.modules, "DeepCache", None)
    missing = check_step_cache(OptimizationConfig(step_cache="2"), "cpu")
    assert not missing.ok and "pip install DeepCache" in missing.fix
    hint = check_step_cache(OptimizationConfig(step_cache="auto"), "cpu")
    assert hint.ok and ".[speed]" in hint.summary


def test_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPT_STEP_CACHE accepts auto, 0 and 2-5 and refuses anything else."""
    from engine.config import ConfigError, load_config

    monkeypatch.setenv("OPT_STEP_CACHE", "3")
    assert load_config(env_file=None).optimization.step_cache == "3"
    monkeypatch.setenv("OPT_STEP_CACHE", "7")
    with pytest.raises(ConfigError, match="OPT_STEP_CACHE"):
        load_config(env_file=None)


def test_default_is_auto(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, the setting is auto (the test suite pins 0 in conftest to keep other tests exact)."""
    monkeypatch.delenv("OPT_STEP_CACHE", raising=False)
    assert tiny_config(tiny_model_dir).optimization.step_cache == "auto"


MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"
GUARD_PROMPTS = 16
TOLERANCE = 0.03  # issue 21 item 7: the judge's scores within 3 points of no caching


@pytest.mark.slow
def test_step_cache_keeps_the_demo_judges_scores() -> None:
    """The adopted interval scores like no caching on held-out demo prompts.

    Measured on 48 prompts (bench/RESULTS.md): off colour 95.8 %, background 100 %, shape
    83.3 %; interval 3 the same three scores, 47 of 48 verdicts the same.
    """
    from engine.config import AppConfig, ModelConfig, OptimizationConfig
    from engine.demo.judge import Judge, score
    from engine.demo.shapes import caption, eval_specs
    from engine.generator import TextToImageGenerator

    assert json.loads((MODEL / "engine_defaults.json").read_text())["num_inference_steps"] == 20
    generator = TextToImageGenerator(
        AppConfig(
            model=ModelConfig(model_id="demo", device="cpu", precision="fp32"),
            optimization=OptimizationConfig(step_cache="0"),
        )
    )
    generator.load_model()
    specs = eval_specs(GUARD_PROMPTS, seed=2024, held_out=True)
    judge = Judge()

    def rates(setting: str) -> dict[str, float]:
        generator.config.optimization.step_cache = setting
        images = [
            generator.run(GenerationRequest(prompt=caption(s), seed=1000 + i)).images[0]
            for i, s in enumerate(specs)
        ]
        return score([judge(im) for im in images], specs)

    try:
        with torch.no_grad():
            off, cached = rates("0"), rates(str(step_cache.AUTO_INTERVAL))
    finally:
        generator.unload()
    print(f"\noff {off}\ninterval {step_cache.AUTO_INTERVAL} {cached}")
    for key in ("color", "background", "shape"):
        assert abs(cached[key] - off[key]) <= TOLERANCE, (key, off, cached)
