"""TextToImageGenerator on a tiny random-weight model: loading, seeds, prompts, metadata."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.config import AppConfig, ModelConfig, OptimizationConfig
from engine.errors import EngineError, GenerationCancelled, ModelNotAvailableError
from engine.generator import TextToImageGenerator
from engine.metadata import parse_parameters, read_parameters
from engine.model_slot import MEMORY_RUNGS
from engine.optimizations import attention_processors, memory_rungs
from engine.pipeline import ModelSource, load_pipeline
from engine.requests import GenerationRequest
from engine.schedulers import SCHEDULER_NAMES, make_scheduler
from tests.conftest import tiny_config


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_seed_api_round_trip(tiny_generator: TextToImageGenerator, tmp_path: Path) -> None:
    images = tiny_generator.generate(prompt="a castle at dusk", seed=42, num_images=2)
    assert len(images) == 2 and images[0].size == (64, 64)
    paths = tiny_generator.save_images(images, prefix="garden", output_dir=tmp_path)
    assert [p.name[:7] for p in paths] == ["garden_", "garden_"]
    assert paths[0].name.endswith("_000.png") and paths[1].name.endswith("_001.png")
    params = parse_parameters(read_parameters(paths[1]) or "")
    assert params["prompt"] == "a castle at dusk"
    assert params["negative_prompt"] == "blurry"
    assert params["Seed"] == "43" and params["Steps"] == "3"
    assert params["Sampler"] == "DPM++ 2M Karras" and params["Size"] == "64x64"
    assert not list(tmp_path.glob(".tmp-*"))


def test_same_seed_same_pixels(tiny_generator: TextToImageGenerator) -> None:
    a = tiny_generator.generate("a red dog", seed=7)[0]
    b = tiny_generator.generate("a red dog", seed=7)[0]
    c = tiny_generator.generate("a red dog", seed=8)[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_image_reproducible_alone(tiny_generator: TextToImageGenerator) -> None:
    batch = tiny_generator.generate("a blue house", seed=100, num_images=3)
    assert tiny_generator.last_result is not None
    assert tiny_generator.last_result.seeds == [100, 101, 102]
    alone = tiny_generator.generate("a blue house", seed=102)[0]
    # Batched and single convolutions round differently in the last bit; allow one level.
    diff = np.abs(pixels(batch[2]) - pixels(alone))
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert np.abs(pixels(batch[0]) - pixels(alone)).mean() > 1


def test_missing_seed_is_drawn_and_reported(tiny_generator: TextToImageGenerator) -> None:
    image = tiny_generator.generate("a cat")[0]
    seed = tiny_generator.last_result.seeds[0]
    assert image.info["seed"] == seed
    assert f"Seed: {seed}," in image.info["parameters"]
    again = tiny_generator.generate("a cat", seed=seed)[0]
    assert np.array_equal(pixels(image), pixels(again))


def test_long_prompt_is_not_truncated(tiny_generator: TextToImageGenerator) -> None:
    head = " ".join(["red castle"] * 40)  # 80 tokens: past CLIP's 75-token window
    long_a = tiny_generator.generate(head + " blue sea", seed=3)[0]
    long_b = tiny_generator.generate(head + " green forest", seed=3)[0]
    assert tiny_generator.last_result.warnings == []
    # The words after token 75 reach the model, so different tails give different images.
    assert np.abs(pixels(long_a) - pixels(long_b)).max() > 0


def test_overlong_prompt_reports_what_was_dropped(tiny_generator: TextToImageGenerator) -> None:
    prompt = " ".join(["red"] * 8 * 75) + " sks tower"
    tiny_generator.generate(prompt, seed=1, negative_prompt="blurry " * 610)
    warnings = tiny_generator.last_result.warnings
    # Which field and how much, in words; not the dropped text pasted back.
    assert warnings == [
        "The prompt is too long: its last 2 words were left out (the model reads at most 600 "
        "tokens).",
        "The negative prompt is too long: its last 10 words were left out "
        "(the model reads at most 600 tokens).",
    ]


# The web-UI sampler name -> the diffusers class and settings, from diffusers' own mapping table
# (docs/source/en/api/schedulers/overview.md). One deliberate difference: for "DPM++ SDE Karras"
# that table names DPMSolverSinglestepScheduler, an ODE solver without the SDE variant (diffusers
# PR 5021); DPMSolverSDEScheduler is the port of k-diffusion's sample_dpmpp_sde, the web UI's sampler.
KARRAS = {"use_karras_sigmas": True}
NO_KARRAS = {"use_karras_sigmas": False}
EXPECTED_SCHEDULERS: dict[str, tuple[str, dict[str, object]]] = {
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **KARRAS},
    ),
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **NO_KARRAS},
    ),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", KARRAS),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **KARRAS},
    ),
    "Euler": ("EulerDiscreteScheduler", NO_KARRAS),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", NO_KARRAS),
    "LMS": ("LMSDiscreteScheduler", NO_KARRAS),
    "Heun": ("HeunDiscreteScheduler", NO_KARRAS),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}
# A model folder saved with a Karras SDE sampler (common for fine-tunes): its scheduler config
# must not leak Karras sigmas or the SDE algorithm into samplers whose names do not say so.
KARRAS_SDE_BASE = {
    "_class_name": "DPMSolverMultistepScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "algorithm_type": "sde-dpmsolver++",
    "use_karras_sigmas": True,
    "solver_order": 3,
}


def assert_sampler(name: str, scheduler: object) -> None:
    """The scheduler is the class and settings the sampler name stands for."""
    class_name, settings = EXPECTED_SCHEDULERS[name]
    assert type(scheduler).__name__ == class_name
    actual = {key: scheduler.config.get(key) for key in settings}
    assert actual == settings
    # The model's own noise schedule is kept.
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)


def test_scheduler_table_covers_every_name() -> None:
    assert tuple(EXPECTED_SCHEDULERS) == SCHEDULER_NAMES


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_runs(tiny_generator: TextToImageGenerator, name: str) -> None:
    images = tiny_generator.generate("a tree", seed=5, scheduler=name, num_inference_steps=2)
    assert images[0].size == (64, 64)
    assert f"Sampler: {name}," in images[0].info["parameters"]
    assert_sampler(name, tiny_generator.pipe.scheduler)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_sampler_settings_do_not_depend_on_the_saved_scheduler(name: str) -> None:
    assert_sampler(name, make_scheduler(name, KARRAS_SDE_BASE))


def test_progress_callback_and_cancel(tiny_generator: TextToImageGenerator) -> None:
    seen: list[tuple[int, int]] = []
    tiny_generator.generate(
        "a tree", seed=1, num_inference_steps=4, progress=lambda i, n, _l: seen.append((i, n))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    cancel = threading.Event()

    def stop_after_two(step: int, total: int, latents: object) -> None:
        assert latents is not None
        if step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled, match="after step 2"):
        tiny_generator.generate(
            "a tree", seed=1, num_inference_steps=6, progress=stop_after_two, cancel=cancel
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 100}, "width: must be a multiple of 8"),
        ({"height": 32}, "height: must be a multiple of 8 between 64 and 2048"),
        ({"num_inference_steps": 0}, "num_inference_steps: must be between 1 and 150"),
        ({"num_inference_steps": 151}, "num_inference_steps"),
        ({"guidance_scale": -1}, "guidance_scale: must be between 0 and 30"),
        ({"num_images": 9}, "num_images: must be between 1 and 8"),
        ({"scheduler": ""}, "scheduler: empty name"),
        ({"scheduler": "Turbo"}, "unknown sampler 'Turbo'; choose one of"),
        ({"seed": -5}, "seed: must be a whole number"),
        ({"lora_scale": 5}, "lora_scale: must be between 0 and 2"),
    ],
)
def test_bad_input_is_refused_before_work(
    tiny_generator: TextToImageGenerator, kwargs: dict, message: str
) -> None:
    calls = []
    with pytest.raises(ValueError, match=message):
        tiny_generator.generate("a dog", progress=lambda *a: calls.append(a), **kwargs)
    assert calls == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_inference_steps", 0, "num_inference_steps: must be between 1 and 150 (got 0)"),
        ("num_images", 0, "num_images: must be between 1 and 8 (got 0)"),
        ("width", 0, "width: must be a multiple of 8 between 64 and 2048 (got 0)"),
        ("height", 0, "height: must be a multiple of 8 between 64 and 2048 (got 0)"),
        ("guidance_scale", -0.5, "guidance_scale: must be between 0 and 30 (got -0.5)"),
        ("num_inference_steps", float("inf"), "num_inference_steps: must be a finite number"),
        ("guidance_scale", float("nan"), "guidance_scale: must be"),
    ],
)
def test_prepare_refuses_zero_and_out_of_range_instead_of_the_default(
    tiny_generator: TextToImageGenerator, field: str, value: float, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_generator.prepare(GenerationRequest(prompt="a dog", **{field: value}))


def test_prepare_none_means_default_and_zero_cfg_is_kept(
    tiny_generator: TextToImageGenerator,
) -> None:
    defaults = tiny_generator.config.generation
    resolved = tiny_generator.prepare(GenerationRequest(prompt="a dog", seed=0))
    assert resolved.num_inference_steps == defaults.num_inference_steps == 3
    assert (resolved.width, resolved.height) == (defaults.width, defaults.height) == (64, 64)
    assert resolved.num_images == 1 and resolved.seeds == (0,)
    assert resolved.guidance_scale == defaults.guidance_scale
    zero_cfg = tiny_generator.prepare(GenerationRequest(prompt="a dog", guidance_scale=0))
    assert zero_cfg.guidance_scale == 0.0
    assert (
        tiny_generator.prepare(GenerationRequest(prompt="a", negative_prompt="")).negative_prompt
        == ""
    )


def test_empty_prompt_refused(tiny_generator: TextToImageGenerator) -> None:
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        tiny_generator.generate("   ")


def test_model_errors_are_clear(tmp_path: Path) -> None:
    def load(model_id: str, **extra: object) -> None:
        cfg = AppConfig(model=ModelConfig(model_id=model_id, device="cpu", **extra))
        TextToImageGenerator(cfg).load_model()

    with pytest.raises(EngineError, match="path not found"):
        load(str(tmp_path / "missing"))
    with pytest.raises(EngineError, match="not a diffusers model"):
        load(str(tmp_path))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(EngineError, match="MODEL_ALLOW_CKPT"):
        load(str(ckpt))
    with pytest.raises(ModelNotAvailableError, match="MODEL_ID=demo"):
        load("someone/not-cached-model", cache_dir=tmp_path / "cache")


def test_pickle_model_folder_needs_allow_ckpt(tmp_path: Path) -> None:
    from tests.tiny_sd import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path / "pickled", safe=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()

    def config(**extra: object) -> AppConfig:
        return AppConfig(model=ModelConfig(model_id=str(folder), device="cpu", **extra))

    with pytest.raises(EngineError, match=r"pickle weights .*unet/diffusion_pytorch_model\.bin"):
        TextToImageGenerator(config()).load_model()
    # The loader itself refuses too, for callers that skip resolve_model_source.
    with pytest.raises(EngineError, match="MODEL_ALLOW_CKPT=true"):
        load_pipeline(ModelSource("folder", str(folder)))
    generator = TextToImageGenerator(config(allow_ckpt=True))
    generator.load_model()
    assert generator.loaded and generator.pipe.unet is not None


def test_single_file_checkpoint_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from tests.ldm_convert import save_original_checkpoint

    original = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    single = tmp_path / "tiny-v1.safetensors"
    save_original_checkpoint(original, single)
    from_folder = TextToImageGenerator(tiny_config(tiny_model_dir))
    from_folder.load_model()
    cfg = tiny_config(tiny_model_dir)
    cfg.model = cfg.model.model_copy(
        update={"model_id": str(single), "single_file_config": str(tiny_model_dir)}
    )
    from_file = TextToImageGenerator(cfg)
    from_file.load_model()
    a = from_folder.generate("a red castle", seed=11)[0]
    b = from_file.generate("a red castle", seed=11)[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert "Model: tiny-v1," in b.info["parameters"]


@pytest.mark.parametrize(
    "flag",
    [
        "enable_attention_slicing",
        "enable_vae_slicing",
        "enable_vae_tiling",
        "channels_last",
        "enable_model_cpu_offload",
        "enable_sequential_cpu_offload",
        "enable_group_offload",
        "enable_xformers",
    ],
)
def test_each_optimization_flag_runs_on_cpu(
    tiny_model_dir: Path, flag: str, caplog: pytest.LogCaptureFixture
) -> None:
    baseline = TextToImageGenerator(tiny_config(tiny_model_dir))
    baseline.load_model()
    cfg = tiny_config(tiny_model_dir)
    cfg.optimization = OptimizationConfig(**{flag: True})
    gen = TextToImageGenerator(cfg)
    with caplog.at_level(logging.INFO, logger="engine"):
        gen.load_model()
    image = gen.generate("a small red star", seed=9, num_images=2)[1]
    reference = baseline.generate("a small red star", seed=9, num_images=2)[1]
    diff = np.abs(pixels(image) - pixels(reference))
    # Slicing and memory layout change only how the work is split, not the picture; VAE
    # tiling is allowed but a CPU never needs it (engine/vae_tiles.py).
    assert diff.max() <= 3
    if flag == "enable_vae_tiling":
        assert gen.slot.vae_tiling_mode(False) == "when needed"
        assert not gen.pipe.vae.use_tiling
    if flag in (
        "enable_model_cpu_offload",
        "enable_sequential_cpu_offload",
        "enable_group_offload",
    ):
        assert f"skipping GPU-only options on cpu: {flag}" in caplog.text
    if flag == "channels_last":
        assert "skipping channels-last on cpu" in caplog.text
    assert gen.slot.dtype.is_floating_point and str(gen.slot.dtype) == "torch.float32"


def processor_names(gen: TextToImageGenerator) -> dict[str, set[str]]:
    return {
        name: {type(proc).__name__ for proc in procs.values()}
        for name, procs in attention_processors(gen.pipe).items()
    }


def test_memory_ladder_on_torch2_never_slices_attention(
    tiny_generator: TextToImageGenerator,
) -> None:
    rungs = tiny_generator.memory_rungs
    assert memory_rungs(sdpa=True) == MEMORY_RUNGS == rungs  # this torch has SDPA; a CPU: no fp8
    assert "attention slicing" not in rungs and "fp8 weight storage" not in rungs
    assert rungs[0] == "VAE slicing and tiling" and rungs[-1] == "one image at a time"
    assert rungs[1:-1] == ("model CPU offload", "group offload", "sequential CPU offload")
    before = processor_names(tiny_generator)
    assert before["unet"] == {"AttnProcessor2_0"}
    vae = tiny_generator.pipe.vae
    try:
        for level in range(1, len(rungs) + 1):
            tiny_generator.set_memory_level(level)
            assert processor_names(tiny_generator) == before
            assert vae.use_slicing and tiny_generator.slot.vae_tiling_mode(False) == "always"
        image = tiny_generator.generate("a red circle", seed=3)[0]
        assert image.size == (64, 64)
    finally:
        tiny_generator.set_memory_level(0)
    assert processor_names(tiny_generator) == before
    assert not vae.use_tiling and not vae.use_slicing
    assert tiny_generator.slot.vae_tiling_mode(False) == "off"


def test_memory_ladder_without_sdpa_restores_the_processor_in_use(
    tiny_generator: TextToImageGenerator,
) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    assert memory_rungs(sdpa=False)[0] == "attention slicing"
    unet = tiny_generator.pipe.unet
    tiny_generator.slot.memory_rungs = memory_rungs(sdpa=False)
    # Stands in for xformers (not installable here): only the class is checked, nothing runs.
    unet.set_attn_processor(XFormersAttnProcessor())
    try:
        tiny_generator.set_memory_level(1)
        assert processor_names(tiny_generator)["unet"] == {"SlicedAttnProcessor"}
        tiny_generator.set_memory_level(3)
        assert processor_names(tiny_generator)["unet"] == {"SlicedAttnProcessor"}
        tiny_generator.set_memory_level(0)
        assert processor_names(tiny_generator)["unet"] == {"XFormersAttnProcessor"}
        # A second climb and descent restores it again (the saved processors are reusable).
        tiny_generator.set_memory_level(1)
        tiny_generator.set_memory_level(0)
        assert processor_names(tiny_generator)["unet"] == {"XFormersAttnProcessor"}
    finally:
        tiny_generator.slot.memory_rungs = MEMORY_RUNGS
        tiny_generator.set_memory_level(0)
        unet.set_attn_processor(AttnProcessor2_0())


def test_torch_compile_is_opt_in(tiny_model_dir: Path) -> None:
    cfg = tiny_config(tiny_model_dir)
    cfg.optimization = OptimizationConfig(enable_torch_compile=True)
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    assert "torch.compile (UNet)" in gen.slot.applied
    assert type(gen.pipe.unet).__name__ == "OptimizedModule"


def test_unload_frees_the_pipeline(tiny_model_dir: Path) -> None:
    gen = TextToImageGenerator(tiny_config(tiny_model_dir))
    gen.load_model()
    gen.unload()
    assert not gen.loaded
    with pytest.raises(EngineError, match="no model loaded"):
        gen.generate("a dog", seed=1)


def test_model_defaults_file_applies_when_settings_are_unset(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    folder = tmp_path / "with-defaults"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "engine_defaults.json").write_text(
        json.dumps({"width": 72, "num_inference_steps": 2, "negative_prompt": ""})
    )
    cfg = AppConfig(model=ModelConfig(model_id=str(folder), device="cpu"))
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    image = gen.generate("a dog", seed=1, height=64)[0]
    assert image.size == (72, 64)
    assert "Steps: 2," in image.info["parameters"]
    cfg2 = tiny_config(folder, width=80)  # an explicit setting wins over the model's default
    gen2 = TextToImageGenerator(cfg2)
    gen2.load_model()
    assert gen2.generate("a dog", seed=1)[0].size == (80, 64)


def test_tiny_vae_previews_and_decode(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(16, 16),
        decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    ).save_pretrained(tmp_path / "taesd")
    cfg = tiny_config(tiny_model_dir)
    cfg.optimization = OptimizationConfig(tiny_vae=str(tmp_path / "taesd"))
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    previews = []
    gen.generate("a tree", seed=1, progress=lambda i, n, lat: previews.append(gen.preview(lat, 48)))
    assert previews and previews[0].size == (48, 48)
    baseline = gen.generate("a tree", seed=1)[0]
    cfg.optimization = OptimizationConfig(tiny_vae=str(tmp_path / "taesd"), tiny_vae_decode=True)
    fast = TextToImageGenerator(cfg)
    fast.load_model()
    assert "tiny VAE decode" in fast.slot.applied
    decoded = fast.generate("a tree", seed=1)[0]
    assert decoded.size == baseline.size
    assert np.abs(pixels(decoded) - pixels(baseline)).mean() > 1  # a different decoder ran
    cfg.optimization = OptimizationConfig(tiny_vae="nobody/missing-taesd")
    with pytest.raises(EngineError, match="not available offline"):
        TextToImageGenerator(cfg).load_model()
