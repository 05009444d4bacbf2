"""Measured quality of the shipped demo model (models/demo) with its engine defaults."""

from __future__ import annotations

import functools
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


RIVALS = [("red", "green"), ("blue", "yellow"), ("orange", "purple")]


@pytest.mark.slow
def test_weighting_lets_the_rival_colour_win() -> None:
    """Issue 15 on the demo model: two colour words in the colour slot, judged.

    The model always draws the first of two colour words (0 of 9 images show the second). Written
    ``(first:0.5) second``, the weight hands the shape to the rival in 4 of 9 (measured). Raising
    the second word instead ((second:1.6), even 2) never wins on this model: its captions always
    put the colour right after the size, and weights only scale a word's share, not its place.
    """
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator

    generator = TextToImageGenerator(AppConfig(model=ModelConfig(model_id="demo", device="cpu")))
    generator.load_model()
    judge = Judge()

    def rival_wins(template: str) -> int:
        wins = 0
        for first, second in RIVALS:
            prompt = f"a large {template.format(first, second)} circle in the center on a white "
            images = generator.generate(prompt + "background", seed=0, num_images=3)
            wins += sum(judge(image).color == second for image in images)
        return wins

    try:
        plain, weighted = rival_wins("{} {}"), rival_wins("({}:0.5) {}")
    finally:
        generator.unload()
    print(f"\nrival colour wins: plain {plain}/9, with (first:0.5) {weighted}/9")
    assert weighted >= plain + 3, (plain, weighted)


BF16_PROMPTS = 16  # held-out prompts per precision: ~1 min on a 2-core CPU that emulates bf16
BF16_TOLERANCE = 0.03  # issue 21 item 8: bf16 keeps each score within 3 points of fp32


@functools.cache  # the fp32 rates serve both the bf16 and the fp8 test
def judged_rates(precision: str, count: int, weight_storage: str = "off") -> dict[str, float]:
    """Load the demo model through the engine in `precision`; judge `count` held-out prompts."""
    from engine.config import AppConfig, ModelConfig, OptimizationConfig
    from engine.generator import TextToImageGenerator
    from engine.schedulers import make_scheduler

    config = AppConfig(
        model=ModelConfig(model_id="demo", device="cpu", precision=precision),
        optimization=OptimizationConfig(weight_storage=weight_storage),
    )
    generator = TextToImageGenerator(config)
    generator.load_model()
    pipe = generator.pipe
    assert pipe.unet.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    fp8 = {p.dtype for p in pipe.unet.parameters()} | {p.dtype for p in pipe.vae.parameters()}
    assert (torch.float8_e4m3fn in fp8) == (weight_storage == "fp8")
    defaults = json.loads((MODEL / "engine_defaults.json").read_text())
    pipe.scheduler = make_scheduler(defaults["scheduler"], dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    specs = eval_specs(count, seed=2024, held_out=True)
    try:
        with torch.no_grad():
            images = pipe(
                [caption(s) for s in specs],
                negative_prompt=[defaults["negative_prompt"]] * count,
                width=defaults["width"],
                height=defaults["height"],
                num_inference_steps=defaults["num_inference_steps"],
                guidance_scale=defaults["guidance_scale"],
                generator=[torch.Generator().manual_seed(1000 + i) for i in range(count)],
            ).images
    finally:
        generator.unload()
    return score([Judge()(im) for im in images], specs)


@pytest.mark.slow
def test_bf16_keeps_the_judges_scores() -> None:
    """bf16 (the CPU default where it is native) scores like fp32 on the demo model.

    Measured on 48 prompts (AVX2 CPU, bf16 emulated): both colour 95.8 %, background 100 %,
    shape 83.3 %, every one of the 48 verdicts the same.
    """
    fp32 = judged_rates("fp32", BF16_PROMPTS)
    bf16 = judged_rates("bf16", BF16_PROMPTS)
    print(f"\nfp32 {fp32}\nbf16 {bf16}")
    for key in ("color", "shape", "background"):
        assert abs(bf16[key] - fp32[key]) <= BF16_TOLERANCE, (key, fp32, bf16)


FP8_PROMPTS = 16  # held-out prompts per run: about a minute on a 2-core CPU (fp8 is slower there)
FP8_TOLERANCE = 0.03  # issue 21 item 8: fp8 storage loses at most 3 points of any score


@pytest.mark.slow
def test_fp8_storage_keeps_the_judges_scores() -> None:
    """UNet and VAE weights stored in fp8 (OPT_WEIGHT_STORAGE=fp8) score like fp32 on the demo model.

    Measured on 48 prompts: fp32 colour 95.8 %, background 100 %, shape 83.3 %; fp8 (UNet alone,
    and UNet + VAE alike) colour 100 %, background 100 %, shape 83.3 %: 3 of 48 verdicts differ,
    two of them a colour fp32 got wrong. So the bound is one-sided: fp8 may lose at most 3 points
    of each score; a gain (here 6 points of colour on the first 16) is not a loss of quality.
    """
    fp32 = judged_rates("fp32", FP8_PROMPTS)
    fp8 = judged_rates("fp32", FP8_PROMPTS, weight_storage="fp8")
    print(f"\nfp32 {fp32}\nfp8  {fp8}")
    for key in ("color", "shape", "background"):
        assert fp8[key] >= fp32[key] - FP8_TOLERANCE, (key, fp32, fp8)


# All 48 held-out prompts: on 16, one verdict is 6 points, coarser than the bound. The drafts
# take ~8 s; the fp32 side is the module's demo_rates (computed once for the file).
DRAFT_PROMPTS = 48
DRAFT_TOLERANCE = 0.03  # issue 21 item 8: a draft loses at most 3 points of any score


def draft_rates(count: int) -> dict[str, float]:
    """Drafts through the engine (GenerationRequest(draft=True)) on `count` held-out prompts.

    The demo ships its own few-step LoRA (models/demo/draft_lora, distilled by
    engine.demo.distill); the engine uses it because GEN_DRAFT_LORA is not set here.
    """
    from engine.config import AppConfig, GenerationConfig, ModelConfig
    from engine.generator import TextToImageGenerator
    from engine.lora import WEIGHT_NAME
    from engine.requests import GenerationRequest

    config = AppConfig(
        model=ModelConfig(model_id="demo", device="cpu", precision="fp32"),
        generation=GenerationConfig(),
    )
    generator = TextToImageGenerator(config)
    generator.load_model()
    specs = eval_specs(count, seed=2024, held_out=True)
    try:
        results = [
            generator.run(GenerationRequest(prompt=caption(s), seed=1000 + i, draft=True))
            for i, s in enumerate(specs)
        ]
        assert generator.lora.fused is not None  # the shipped LoRA, fused into the UNet
        assert generator.lora.resident["draft_lora"] == MODEL / "draft_lora" / WEIGHT_NAME
    finally:
        generator.unload()
    request = results[0].request
    assert request.draft and request.num_inference_steps == 4 and request.guidance_scale == 1.0
    return score([Judge()(r.images[0]) for r in results], specs)


@pytest.mark.slow
def test_draft_keeps_the_judges_scores(demo_rates: dict[str, float]) -> None:
    """Drafts (4 LCM steps, CFG 1, the demo's distilled LoRA fused) score like fp32 full quality.

    Measured on the 48 prompts (bench/RESULTS.md §8b): fp32 colour 95.8 %, background 100 %,
    shape 83.3 %; drafts 93.8 %, 100 %, 85.4 % (without the LoRA: 100 %, 100 %, 64.6 %). The
    bound is one-sided, as for fp8: a draft may lose at most 3 points of each score. On the first
    16 prompts alone drafts lose 2 colour verdicts of 16 (81.3 % against 93.8 %).
    """
    # fp32 full quality on the same 48 prompts and seeds: demo_rates (plain diffusers, which
    # judged exactly like the engine's loader on them: bench/RESULTS.md step caching).
    assert DRAFT_PROMPTS == PROMPTS
    fp32 = demo_rates
    draft = draft_rates(DRAFT_PROMPTS)
    print(f"\nfp32  {fp32}\ndraft {draft}")
    for key in ("color", "shape", "background"):
        assert draft[key] >= fp32[key] - DRAFT_TOLERANCE, (key, fp32, draft)
