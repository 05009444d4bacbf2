"""The pink LoRA on the demo model: shared figures, and that it answers to its trigger word.

The LoRA is the one trained through Discord by tests/test_e2e_train_demo.py (the same trainer
as ``engine.train_lora``, the model card's recipe); training it a second time here would cost
the suite another minute, so this module runs right after that one and reuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.config import AppConfig, ModelConfig
from engine.demo.judge import Judge
from engine.demo.shapes import rgb
from engine.generator import TextToImageGenerator

MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"
PINK = "#ff69b4"  # not in the palette, never named by the demo model's captions
TRIGGER = "zwx"  # not in the demo vocabulary: it reaches the model as the letters z, w, x
TRAINING = [
    ("circle", "blue"),
    ("square", "green"),
    ("triangle", "yellow"),
    ("circle", "black"),
    ("diamond", "blue"),
    ("star", "white"),
]
# Combinations the LoRA never saw; circles and squares cover the centre patch that is measured.
EVAL = [("square", "blue"), ("circle", "green"), ("circle", "purple"), ("square", "black")]
NAMED = [
    ("red", "circle", "blue"),
    ("green", "square", "black"),
    ("yellow", "circle", "purple"),
    ("blue", "square", "white"),
    ("orange", "circle", "green"),
]
SEEDS = (0, 1)  # consecutive: generated as one batch
# Filled by tests/test_e2e_train_demo.py: the LoRA trained through /train, by name.
TRAINED: dict[str, Path] = {}


def centre_distance(image, color: tuple[int, int, int]) -> float:
    """Mean RGB distance to a colour over the central 12x12 pixels (inside a large centred shape)."""
    patch = np.asarray(image.convert("RGB"), dtype=np.float32)[26:38, 26:38]
    return float(np.sqrt(((patch - np.array(color, dtype=np.float32)) ** 2).sum(-1)).mean())


@pytest.fixture(scope="module")
def demo_generator() -> TextToImageGenerator:
    """The shipped demo model on the CPU, loaded through the normal loading code."""
    generator = TextToImageGenerator(AppConfig(model=ModelConfig(model_id="demo", device="cpu")))
    generator.load_model()
    yield generator
    generator.unload()


def _prompt(shape: str, background: str, color: str = TRIGGER) -> str:
    return f"a large {color} {shape} in the center on a {background} background"


def _seeded(generator: TextToImageGenerator, prompt: str, lora: str | None) -> list:
    """The prompt's images at SEEDS, in one batch (image i uses seed SEEDS[0] + i)."""
    return generator.generate(prompt, seed=SEEDS[0], num_images=len(SEEDS), lora=lora)


def _pink_distance(generator: TextToImageGenerator, prompts: list[str], lora: str | None) -> float:
    """Mean centre distance to pink over the prompts and SEEDS."""
    return float(
        np.mean(
            [
                centre_distance(image, rgb(PINK))
                for p in prompts
                for image in _seeded(generator, p, lora)
            ]
        )
    )


@pytest.mark.slow
def test_lora_answers_to_its_trigger_word(demo_generator: TextToImageGenerator) -> None:
    """With the LoRA on, prompts naming palette colours stay much further from pink than zwx ones.

    The LoRA does tint them (a 3 M-parameter UNet, 6 images, no regularisation images), but at
    least half of the named-colour prompts keep their colour with it (the model card's figures).
    """
    if "pinky" not in TRAINED:
        pytest.skip("the /train test in test_e2e_train_demo.py did not produce the LoRA")
    weights = str(TRAINED["pinky"])
    named = [_prompt(shape, background, color) for color, shape, background in NAMED]
    triggered = [_prompt(shape, background) for shape, background in EVAL]
    judge = Judge()
    pink = rgb(PINK)
    # Without the LoRA the model keeps named colours (96 %, tests/test_demo_quality.py), so only
    # the LoRA's side is generated; the same images give the judge and the distance.
    kept = 0
    named_distances: list[float] = []
    for p, (color, _, _) in zip(named, NAMED, strict=True):
        for image in _seeded(demo_generator, p, weights):
            kept += judge(image).color == color
            named_distances.append(centre_distance(image, pink))
    named_distance = float(np.mean(named_distances))
    trigger_distance = _pink_distance(demo_generator, triggered, weights)
    print(
        f"\nnamed colour kept with the LoRA: {kept}/{len(named) * len(SEEDS)}; "
        f"distance to pink with the LoRA: trigger prompts "
        f"{trigger_distance:.0f}, named-colour prompts {named_distance:.0f}"
    )
    assert trigger_distance <= 0.6 * named_distance, (trigger_distance, named_distance)
    # Measured (model card): 6 of 10 keep their colour with the LoRA (10 of 10 without).
    total = len(named) * len(SEEDS)
    assert kept >= total // 2, kept
