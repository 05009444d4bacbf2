"""Issue 7: a LoRA trained by engine.train_lora on 6 images teaches the demo model a new colour."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import AppConfig, ModelConfig
from engine.demo.judge import Judge
from engine.demo.shapes import ShapeSpec, render, rgb
from engine.generator import TextToImageGenerator
from engine.train_lora import TrainConfig, train

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
SEEDS = (0, 1)
STEPS = 1000
MAX_TRAIN_SECONDS = 180  # issue 7: "at most 3 minutes" on CPU


def centre_distance(image, color: tuple[int, int, int]) -> float:
    """Mean RGB distance to a colour over the central 12x12 pixels (inside a large centred shape)."""
    patch = np.asarray(image.convert("RGB"), dtype=np.float32)[26:38, 26:38]
    return float(np.sqrt(((patch - np.array(color, dtype=np.float32)) ** 2).sum(-1)).mean())


@pytest.fixture(scope="module")
def pink_lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Train a rank-8 UNet LoRA on 6 rendered pink shapes captioned with the trigger word."""
    root = tmp_path_factory.mktemp("pink")
    data = root / "data"
    data.mkdir()
    for index, (shape, background) in enumerate(TRAINING):
        render(ShapeSpec(shape, PINK, background, "large", "center")).save(data / f"{index}.png")
        (data / f"{index}.txt").write_text(
            f"a large {TRIGGER} {shape} in the center on a {background} background"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    started = time.monotonic()
    try:
        out = train(
            TrainConfig(
                dataset_dir=data,
                output_dir=root / "lora",
                model=str(MODEL),
                trigger_word=TRIGGER,
                max_steps=STEPS,
                rank=8,
                lr=2e-3,
                resolution=64,
                checkpoint_every=0,
                sample_steps=0,
                device="cpu",
            )
        )
    finally:
        torch.set_num_threads(threads)
    return out.weights_path, time.monotonic() - started


@pytest.fixture(scope="module")
def demo_generator() -> TextToImageGenerator:
    """The shipped demo model on the CPU, loaded through the normal loading code."""
    generator = TextToImageGenerator(AppConfig(model=ModelConfig(model_id="demo", device="cpu")))
    generator.load_model()
    yield generator
    generator.unload()


def _prompt(shape: str, background: str, color: str = TRIGGER) -> str:
    return f"a large {color} {shape} in the center on a {background} background"


def _pink_distance(generator: TextToImageGenerator, prompts: list[str], lora: str | None) -> float:
    """Mean centre distance to pink over the prompts and SEEDS."""
    return float(
        np.mean(
            [
                centre_distance(generator.generate(p, seed=seed, lora=lora)[0], rgb(PINK))
                for p in prompts
                for seed in SEEDS
            ]
        )
    )


@pytest.mark.slow
def test_lora_teaches_a_new_colour(
    pink_lora: tuple[Path, float], demo_generator: TextToImageGenerator
) -> None:
    """With the trigger word, the LoRA at least halves the distance to pink; without it, no change."""
    weights, seconds = pink_lora
    assert seconds < MAX_TRAIN_SECONDS, f"training took {seconds:.0f} s"
    prompts = [_prompt(shape, background) for shape, background in EVAL]
    without = _pink_distance(demo_generator, prompts, None)
    with_lora = _pink_distance(demo_generator, prompts, str(weights))
    print(
        f"\nmean distance to pink in the shape: without the LoRA {without:.0f}, "
        f"with it {with_lora:.0f} ({with_lora / without:.0%}); trained in {seconds:.0f} s"
    )
    # Without the LoRA the model never draws pink (measured 228, model card).
    assert without >= 180, without
    assert with_lora <= 0.5 * without, (without, with_lora)


@pytest.mark.slow
def test_lora_answers_to_its_trigger_word(
    pink_lora: tuple[Path, float], demo_generator: TextToImageGenerator
) -> None:
    """With the LoRA on, prompts naming palette colours stay much further from pink than zwx ones.

    The LoRA does tint them (a 3 M-parameter UNet, 6 images, no regularisation images), but at
    least half of the named-colour prompts keep their colour with it (the model card's figures).
    """
    weights = str(pink_lora[0])
    named = [_prompt(shape, background, color) for color, shape, background in NAMED]
    triggered = [_prompt(shape, background) for shape, background in EVAL]
    judge = Judge()
    kept = {
        label: sum(
            judge(demo_generator.generate(p, seed=seed, lora=lora)[0]).color == color
            for p, (color, _, _) in zip(named, NAMED, strict=True)
            for seed in SEEDS
        )
        for label, lora in (("without", None), ("with", weights))
    }
    named_distance = _pink_distance(demo_generator, named, weights)
    trigger_distance = _pink_distance(demo_generator, triggered, weights)
    print(
        f"\nnamed colour kept: {kept['without']}/{len(named) * len(SEEDS)} without the LoRA, "
        f"{kept['with']} with it; distance to pink with the LoRA: trigger prompts "
        f"{trigger_distance:.0f}, named-colour prompts {named_distance:.0f}"
    )
    assert trigger_distance <= 0.6 * named_distance, (trigger_distance, named_distance)
    # Measured (model card): 10 of 10 keep their colour without the LoRA, 6 of 10 with it.
    total = len(named) * len(SEEDS)
    assert kept["without"] >= total - 1, kept
    assert kept["with"] >= total // 2, kept
