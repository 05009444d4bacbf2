"""Issue 12 on the demo model: /train from captioned attachments → /lora use → pinker shapes.

The second test reuses the LoRA the first one trained through Discord (the same trainer as
``engine.train_lora``, the model card's recipe): training it twice would cost the suite minutes,
so both live in this module, which pytest-xdist (``--dist loadfile``) keeps on one worker.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import AppConfig, ModelConfig
from engine.demo.judge import Judge
from engine.demo.shapes import ShapeSpec, render, rgb
from engine.generator import TextToImageGenerator
from engine.pipeline import DEMO_MODEL_DIR
from tests.e2e_harness import World, running, wait_result
from tests.test_e2e_train import SLOW, wait_train_message

DEMO_SETTINGS = {"num_inference_steps": 20, "guidance_scale": 5.0, "negative_prompt": ""}
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
# Filled by the /train test below: the LoRA trained through Discord, by name.
TRAINED: dict[str, Path] = {}


def centre_distance(image, color: tuple[int, int, int]) -> float:
    """Mean RGB distance to a colour over the central 12x12 pixels (inside a large centred shape)."""
    patch = np.asarray(image.convert("RGB"), dtype=np.float32)[26:38, 26:38]
    return float(np.sqrt(((patch - np.array(color, dtype=np.float32)) ** 2).sum(-1)).mean())


def caption(shape: str, background: str) -> str:
    """A caption in the demo model's grammar with the trigger word in the colour's place."""
    return f"a large {TRIGGER} {shape} in the center on a {background} background"


def pink_shapes(world: World) -> dict[str, object]:
    """image1..image6: rendered pink shapes whose alt text is their caption."""
    options: dict[str, object] = {}
    for index, (shape, background) in enumerate(TRAINING):
        buffer = io.BytesIO()
        render(ShapeSpec(shape, PINK, background, "large", "center")).save(buffer, format="PNG")
        attachment = world.fake.add_attachment(f"pink {index}.png", buffer.getvalue(), "image/png")
        attachment.description = caption(shape, background)
        options[f"image{index + 1}"] = attachment
    return options


async def pink_distance(world: World, prompts: list[str]) -> float:
    """Mean distance to pink in the middle of alice's /imagine results over prompts × SEEDS."""
    distances = []
    for prompt in prompts:
        options = {"prompt": prompt, "seed": SEEDS[0], "count": len(SEEDS)}
        result = await wait_result(await world.slash(world.alice, "imagine", options), timeout=SLOW)
        assert len(result.files) == len(SEEDS)
        for file in result.files:
            with Image.open(io.BytesIO(file.data)) as image:
                distances.append(centre_distance(image, rgb(PINK)))
    return float(np.mean(distances))


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 2 min alone; 8.5 min was measured on a machine loaded 4x over
async def test_lora_trained_from_discord_makes_demo_shapes_pink(world) -> None:
    async with running(world, DEMO_MODEL_DIR, generation=DEMO_SETTINGS) as bot:
        started = time.monotonic()
        it = await world.slash(
            world.admin, "train", {"name": "pinky", "trigger": TRIGGER, **pink_shapes(world)}
        )
        queued = (await it.wait_followup(timeout=SLOW)).content or ""
        # The model's recipe (models/demo/lora_recipe.json), and the alt texts as captions.
        assert "queued" in queued and "6 images" in queued, queued
        assert "1000 steps" in queued and "rank 8" in queued and "learning rate 0.002" in queued
        for shape, background in TRAINING:
            assert f"`{caption(shape, background)}`" in queued, queued
        assert len(queued) <= 2000
        final = await wait_train_message(world, "pinky", "is ready", timeout=600)
        trained_s = time.monotonic() - started

        # The before/after proof: the first caption at seed 0 without (left) and with the LoRA.
        content = final.payload.get("content") or ""
        assert "without the LoRA" in content and caption(*TRAINING[0]) in content
        with Image.open(io.BytesIO(final.files[0].data)) as proof:
            assert proof.size == (64 + 4 + 64, 64 + 14)
            before, after = proof.crop((0, 0, 64, 64)), proof.crop((68, 0, 132, 64))
        assert centre_distance(after, rgb(PINK)) < 0.6 * centre_distance(before, rgb(PINK))

        prompts = [caption(shape, background) for shape, background in EVAL]
        without = await pink_distance(world, prompts)
        use = await world.slash(world.alice, "lora use", {"name": "pinky"})
        assert "pinky" in ((await use.wait_callback(timeout=30)).content or "")
        with_lora = await pink_distance(world, prompts)
        lora = await bot.storage.loras.get_lora("pinky")
        assert lora is not None and lora.status == "ready"
        TRAINED["pinky"] = Path(lora.path)  # for test_lora_answers_to_its_trigger_word
    print(
        f"\n/train on the demo model: {trained_s:.0f} s to 'is ready'; distance to pink "
        f"without the LoRA {without:.0f}, with it {with_lora:.0f} ({with_lora / without:.0%})"
    )
    assert with_lora <= 0.6 * without, (without, with_lora)


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
        pytest.skip("the /train test above did not produce the LoRA")
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
