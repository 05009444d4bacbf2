"""img2img and upscale quality on the shipped demo model, read by the demo judge (few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.demo.judge import Judge
from engine.demo.shapes import ShapeSpec, render

MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"
STEPS = 10
OTHER = "a large yellow square in the center on a green background"


@pytest.fixture(scope="module")
def demo():
    """The demo model loaded through the engine, and the judge."""
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator

    gen = TextToImageGenerator(AppConfig(model=ModelConfig(model_id=str(MODEL), device="cpu")))
    gen.load_model()
    yield gen, Judge()
    gen.unload()


@pytest.fixture(scope="module")
def red_circle_on_blue() -> Image.Image:
    """A drawn (not generated) large red circle on a blue background."""
    return render(ShapeSpec("circle", "red", "blue", "large", "center"))


def test_low_strength_keeps_the_picture(demo, red_circle_on_blue) -> None:
    gen, judge = demo
    (image,) = gen.generate(
        OTHER, init_image=red_circle_on_blue, strength=0.3, seed=1, num_inference_steps=STEPS
    )
    verdict = judge(image)
    assert verdict.background == "blue", verdict  # not the prompt's green


def test_high_strength_follows_the_prompt(demo, red_circle_on_blue) -> None:
    gen, judge = demo
    (image,) = gen.generate(
        OTHER, init_image=red_circle_on_blue, strength=0.9, seed=1, num_inference_steps=STEPS
    )
    verdict = judge(image)
    assert (verdict.color, verdict.background) == ("yellow", "green"), verdict


def test_upscale_keeps_shape_and_colours(demo) -> None:
    gen, judge = demo
    (original,) = gen.generate(
        "a large red triangle in the center on a white background",
        seed=3,
        num_inference_steps=STEPS,
    )
    before = judge(original)
    assert (before.color, before.background, before.shape) == ("red", "white", "triangle")
    big = gen.upscale(original, factor=2.0, num_inference_steps=STEPS)
    assert big.size == (128, 128)
    # The judge's shape templates are 64 px renders: read the upscale at that scale.
    after = judge(big.resize((64, 64), Image.Resampling.LANCZOS))
    assert after == before, (before, after)
