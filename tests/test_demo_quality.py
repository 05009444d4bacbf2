"""Measured quality of the shipped demo model (models/demo) with its engine defaults."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import ImageFilter

from engine.demo.judge import Judge, score, self_check
from engine.demo.shapes import caption, eval_specs, random_spec, render

MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"
TARGETS = {"color": 0.85, "background": 0.85, "shape": 0.60}
PROMPTS = 48  # held-out (shape, colour, background, size, position) combinations, one seed each


def test_judge_is_accurate_on_rendered_ground_truth() -> None:
    """The judge itself must be right on clean renders before it may judge the model."""
    rates = self_check(count=200, seed=99)
    print(f"judge on ground truth: {rates}")
    assert min(rates.values()) >= 0.98, rates


def test_judge_tolerates_blur() -> None:
    """Generated images are softer than renders; the judge must still read blurred renders."""
    judge = Judge()
    rng = random.Random(7)
    specs = [random_spec(rng, held_out=None) for _ in range(100)]
    images = [render(s).filter(ImageFilter.GaussianBlur(1.0)) for s in specs]
    rates = score([judge(im) for im in images], specs)
    print(f"judge on blurred renders: {rates}")
    assert min(rates.values()) >= 0.95, rates


@pytest.fixture(scope="module")
def demo_rates() -> dict[str, float]:
    """Generate held-out prompts with the engine defaults; judge colour, background and shape."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    assert (MODEL / "model_index.json").is_file(), "models/demo is missing"
    defaults = json.loads((MODEL / "engine_defaults.json").read_text())
    assert defaults["scheduler"] == "DPM++ 2M Karras"
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++"
    )
    pipe.set_progress_bar_config(disable=True)
    specs = eval_specs(PROMPTS, seed=2024, held_out=True)
    with torch.no_grad():
        images = pipe(
            [caption(s) for s in specs],
            negative_prompt=[defaults["negative_prompt"]] * len(specs),
            width=defaults["width"],
            height=defaults["height"],
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            generator=[torch.Generator().manual_seed(1000 + i) for i in range(len(specs))],
        ).images
    assert all(im.size == (defaults["width"], defaults["height"]) for im in images)
    rates = score([Judge()(im) for im in images], specs)
    print(
        f"\ndemo model on {len(specs)} held-out prompts: colour {rates['color']:.0%}, "
        f"background {rates['background']:.0%}, shape {rates['shape']:.0%}"
    )
    return rates


@pytest.mark.slow
def test_demo_shape_colour(demo_rates: dict[str, float]) -> None:
    """The shape has the named colour in at least 85 % of images (issue 7)."""
    assert demo_rates["color"] >= TARGETS["color"], demo_rates


@pytest.mark.slow
def test_demo_background_colour(demo_rates: dict[str, float]) -> None:
    """The background has the named colour in at least 85 % of images (issue 7)."""
    assert demo_rates["background"] >= TARGETS["background"], demo_rates


@pytest.mark.slow
def test_demo_shape(demo_rates: dict[str, float]) -> None:
    """The judge sees the named shape in at least 60 % of images (issue 7)."""
    assert demo_rates["shape"] >= TARGETS["shape"], demo_rates
