"""Issue 12: on the demo model, /train from captioned attachments → /lora use → visibly pinker shapes."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.demo.shapes import ShapeSpec, render, rgb
from engine.pipeline import DEMO_MODEL_DIR
from tests.e2e_harness import World, running, wait_result
from tests.test_e2e_train import SLOW, wait_train_message
from tests.test_e2e_train_demo_trigger import (
    EVAL,
    PINK,
    TRAINED,
    TRAINING,
    TRIGGER,
    centre_distance,
)

DEMO_SETTINGS = {"num_inference_steps": 20, "guidance_scale": 5.0, "negative_prompt": ""}
SEEDS = (0, 1)  # one /imagine with count 2 (image i uses seed 0 + i)


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
        TRAINED["pinky"] = Path(lora.path)  # for test_e2e_train_demo_trigger.py
    print(
        f"\n/train on the demo model: {trained_s:.0f} s to 'is ready'; distance to pink "
        f"without the LoRA {without:.0f}, with it {with_lora:.0f} ({with_lora / without:.0%})"
    )
    assert with_lora <= 0.6 * without, (without, with_lora)
