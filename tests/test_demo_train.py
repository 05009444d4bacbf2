"""The demo model's training script and renderer: a short run that the engine can load."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.config import AppConfig, ModelConfig
from engine.demo import train as demo_train
from engine.demo.shapes import ShapeSpec, random_rgb_spec, render, rgb
from engine.generator import TextToImageGenerator


def test_render_takes_palette_names_and_hex_colours() -> None:
    """'#rrggbb' colours render exactly; palette names still work; unknown names are refused."""
    image = np.asarray(render(ShapeSpec("square", "#ff69b4", "#000000", "large", "center")))
    assert tuple(image[32, 32]) == (255, 105, 180)
    assert tuple(image[1, 1]) == (0, 0, 0)
    assert rgb("red") == (220, 30, 30)
    with pytest.raises(KeyError):
        rgb("pinkish")


def test_random_rgb_specs_vary_their_colours() -> None:
    """The autoencoder's arbitrary-colour specs are hex colours that differ from draw to draw."""
    rng = random.Random(3)
    specs = [random_rgb_spec(rng) for _ in range(20)]
    colours = {spec.color for spec in specs} | {spec.background for spec in specs}
    assert len(colours) >= 35
    assert all(c.startswith("#") and len(c) == 7 for c in colours)
    for spec in specs[:3]:
        corner = tuple(np.asarray(render(spec))[0, 0])
        assert corner == rgb(spec.background)


def _train_briefly(out: Path) -> None:
    """Both commands of the model card, two steps per stage (the VAE checked to change)."""
    demo_train.main(
        [
            "--out", str(out), "--vae-steps", "2", "--pool", "32", "--batch", "4",
            "--steps", "2", "--eval-every", "1000", "--eval-count", "2",
        ]
    )  # fmt: skip
    before = (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    demo_train.main(["--decoder-only", str(out / "vae"), "--decoder-steps", "2"])
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() != before


@pytest.mark.slow
def test_training_script_writes_a_pipeline_the_engine_loads(tmp_path: Path) -> None:
    """Two steps of each stage: the folder loads through the normal model loading and draws."""
    out = tmp_path / "demo"
    threads = torch.get_num_threads()  # main() sets its own thread count
    try:
        _train_briefly(out)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out / "training_log.json").read_text())["step"] == 2
    defaults = json.loads((out / "engine_defaults.json").read_text())
    assert defaults == demo_train.ENGINE_DEFAULTS
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        dtypes = {str(weights.get_tensor(key).dtype) for key in weights.keys()}  # noqa: SIM118
    assert dtypes == {"torch.float16"}
    generator = TextToImageGenerator(AppConfig(model=ModelConfig(model_id=str(out), device="cpu")))
    generator.load_model()
    try:
        image = generator.generate("a red circle on a blue background", seed=1)[0]
    finally:
        generator.unload()
    assert image.size == (64, 64)
