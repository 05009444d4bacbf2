"""Inpaint and outpaint quality on the shipped demo model, read by the demo judge (few steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.demo.judge import main_colour, region_colours
from engine.demo.shapes import ShapeSpec, render

MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"
STEPS = 10


@pytest.fixture(scope="module")
def gen():
    """The demo model loaded through the engine."""
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator

    generator = TextToImageGenerator(
        AppConfig(model=ModelConfig(model_id=str(MODEL), device="cpu"))
    )
    generator.load_model()
    yield generator
    generator.unload()


@pytest.fixture(scope="module")
def red_circle() -> Image.Image:
    """A drawn (not generated) large red circle in the centre of a blue background."""
    return render(ShapeSpec("circle", "red", "blue", "large", "center"))


def test_repainting_the_shapes_region_changes_its_colour(gen, red_circle) -> None:
    # The "centre" region (16-48 px) holds the whole circle (17-47 px).
    out = gen.inpaint(
        red_circle, "centre", prompt="a large green circle in the center on a blue background",
        seed=0, num_inference_steps=STEPS,
    )  # fmt: skip
    inside = np.zeros((64, 64), bool)
    inside[16:48, 16:48] = True
    assert main_colour(out, inside) == "green", region_colours(out, inside)
    assert region_colours(out)["red"] == 0.0, region_colours(out)  # no red left anywhere
    band = np.zeros((64, 64), bool)
    band[12:52, 12:52] = True  # the region and its 4 px soft edge
    unchanged = np.asarray(out)[~band] == np.asarray(red_circle)[~band]
    assert unchanged.all()  # outside the mask nothing changes


def test_zoom_out_border_takes_the_prompts_background(gen, red_circle) -> None:
    out = gen.outpaint(
        red_circle, zoom=2, prompt="a large red circle in the center on a yellow background",
        seed=0, num_inference_steps=STEPS,
    )  # fmt: skip
    border = np.ones((64, 64), bool)
    border[16:48, 16:48] = False  # the old picture, shrunk to 32 px
    assert out.size == (64, 64)
    assert main_colour(out, border) == "yellow", region_colours(out, border)
    # The old picture shrunk, exactly, beyond the 4 px overlap and the 4 px soft edge.
    shrunk = np.asarray(red_circle.resize((32, 32), Image.Resampling.LANCZOS))
    assert (np.asarray(out)[24:40, 24:40] == shrunk[8:24, 8:24]).all()


@pytest.mark.parametrize("side", ["right", "up"])
def test_pan_strip_takes_the_prompts_background(gen, red_circle, side) -> None:
    out = gen.outpaint(
        red_circle, pan=side, prompt="a small red circle in the center on a green background",
        seed=0, num_inference_steps=STEPS,
    )  # fmt: skip
    pixels = np.asarray(out)
    if side == "right":
        assert out.size == (96, 64)
        strip, old = pixels[:, 64:], pixels[:, :56]
        assert (old == np.asarray(red_circle)[:, :56]).all()
    else:
        assert out.size == (64, 96)
        strip, old = pixels[:32], pixels[40:]
        assert (old == np.asarray(red_circle)[8:]).all()
    assert main_colour(Image.fromarray(strip)) == "green", region_colours(Image.fromarray(strip))
