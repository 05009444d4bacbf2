"""LoRA at inference: resident adapters, per-request switching, scale, formats, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import LoraError
from engine.generator import TextToImageGenerator
from engine.lora import inspect_lora_file


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def render(gen: TextToImageGenerator, **kwargs: object) -> np.ndarray:
    return pixels(gen.generate("a red castle", seed=21, **kwargs)[0])


def test_lora_changes_output_and_switching_back_restores_base(
    tiny_generator: TextToImageGenerator, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    base = render(tiny_generator)
    with_a = render(tiny_generator, lora=str(tiny_lora), lora_scale=1.0)
    with_b = render(tiny_generator, lora=str(tiny_lora_b), lora_scale=1.0)
    assert np.abs(with_a - base).mean() > 1
    assert np.abs(with_b - with_a).mean() > 1
    assert len(tiny_generator.lora.resident) == 2  # both stay loaded
    assert np.array_equal(render(tiny_generator), base)
    assert np.array_equal(render(tiny_generator, lora=str(tiny_lora), lora_scale=1.0), with_a)


def test_scale_zero_equals_no_lora(tiny_generator: TextToImageGenerator, tiny_lora: Path) -> None:
    base = render(tiny_generator)
    assert np.array_equal(render(tiny_generator, lora=str(tiny_lora), lora_scale=0.0), base)
    half = render(tiny_generator, lora=str(tiny_lora), lora_scale=0.5)
    full = render(tiny_generator, lora=str(tiny_lora), lora_scale=1.0)
    assert 0 < np.abs(half - base).mean() < np.abs(full - base).mean() * 1.5


def test_kohya_file_loads(tiny_generator: TextToImageGenerator, tiny_kohya_lora: Path) -> None:
    info = inspect_lora_file(tiny_kohya_lora)
    assert info.format == "kohya" and info.rank == 4
    base = render(tiny_generator)
    assert np.abs(render(tiny_generator, lora=str(tiny_kohya_lora)) - base).mean() > 1


def test_seed_api_load_lora_weights_sets_a_default(tiny_model_dir: Path, tiny_lora: Path) -> None:
    from tests.conftest import tiny_config

    gen = TextToImageGenerator(tiny_config(tiny_model_dir))
    gen.load_model()
    base = render(gen)
    gen.load_lora_weights(tiny_lora.parent, scale=0.8)
    styled = gen.generate("a red castle", seed=21)[0]
    assert np.abs(pixels(styled) - base).mean() > 1
    gen.unload_lora_weights()
    assert np.array_equal(render(gen), base)


def test_bad_lora_files_are_refused_clearly(
    tiny_generator: TextToImageGenerator, tiny_model_dir: Path, foreign_lora: Path, tmp_path: Path
) -> None:
    base = render(tiny_generator)
    with pytest.raises(LoraError, match=r"nope\.safetensors was not found"):
        tiny_generator.generate("x", lora=str(tmp_path / "nope.safetensors"))
    pt = tmp_path / "style.pt"
    pt.write_bytes(b"x")
    with pytest.raises(LoraError, match=r"not a \.safetensors file"):
        tiny_generator.generate("x", lora=str(pt))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not safetensors")
    with pytest.raises(LoraError, match="not a readable safetensors file"):
        tiny_generator.generate("x", lora=str(junk))
    with pytest.raises(LoraError, match="holds no LoRA weights"):
        tiny_generator.generate("x", lora=str(tiny_model_dir / "unet"))
    with pytest.raises(LoraError, match="does not fit the loaded model") as misfit:
        tiny_generator.generate("x", lora=str(foreign_lora))
    # The library's own words (a state_dict mismatch) stay in the log.
    assert str(misfit.value) == (
        f"LoRA {foreign_lora.parent.name} does not fit the loaded model "
        "(it was made for another base model)"
    )
    # A failed load leaves no half-loaded adapter behind.
    assert np.array_equal(render(tiny_generator), base)


def test_draft_uses_lcm_lora_and_sampler(
    tiny_model_dir: Path, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_model_dir)
    cfg.generation = cfg.generation.model_copy(
        update={"draft_lora": str(tiny_lora_b), "draft_steps": 4, "draft_guidance": 1.5}
    )
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    from engine.requests import GenerationRequest

    result = gen.run(
        GenerationRequest(prompt="a red castle", seed=21, draft=True, negative_prompt="blurry")
    )
    params = result.parameters[0]
    assert "Sampler: LCM," in params and "Steps: 4," in params and "CFG scale: 1.5," in params
    assert "Draft: LCM-LoRA" in params
    assert result.warnings == ["draft: negative prompts have little effect"]
    plain = gen.run(
        GenerationRequest(
            prompt="a red castle",
            seed=21,
            scheduler="LCM",
            num_inference_steps=4,
            guidance_scale=1.5,
            negative_prompt="blurry",
            draft=False,
        )
    )
    # The LCM-LoRA is what makes the difference between the two runs.
    assert np.abs(pixels(result.images[0]) - pixels(plain.images[0])).mean() > 1
    assert gen.lora.active == ()
    styled = gen.run(
        GenerationRequest(
            prompt="a red castle",
            seed=21,
            draft=True,
            negative_prompt="blurry",
            lora=str(tiny_lora),
        )
    )
    assert len(gen.lora.active) == 2  # a style LoRA and the LCM-LoRA together
    assert np.abs(pixels(styled.images[0]) - pixels(result.images[0])).mean() > 1


def test_draft_without_weights_offline_says_what_to_do(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from engine.errors import EngineError
    from engine.requests import GenerationRequest
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_model_dir)
    cfg.model = cfg.model.model_copy(update={"cache_dir": tmp_path / "cache"})
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    with pytest.raises(EngineError, match="drafts are not available") as refused:
        gen.run(GenerationRequest(prompt="a red castle", seed=1, draft=True))
    assert "Error" not in str(refused.value)  # no hub exception's class name for the user
    # The owner's fix is known before anything runs (the front door and the CLI ask first).
    from engine.adapters import draft_lora_missing

    problem = draft_lora_missing(cfg)
    assert problem is not None and "GEN_DRAFT_LORA" in problem and "not in the cache" in problem
