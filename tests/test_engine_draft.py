"""The draft tier on the tiny model: one UNet batch, 4 steps, the LoRA fused and taken out exactly,
the tiny VAE per request, the server default and its fallback, the old fast-mode names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.demo.distill import TARGETS as DRAFT_TARGETS  # the LCM-LoRA's module kinds
from engine.errors import EngineError, RequestError
from engine.generator import TextToImageGenerator
from engine.requests import GenerationRequest
from tests.conftest import tiny_config
from tests.tiny_sd import build_tiny_pipeline, make_tiny_lora


@pytest.fixture(scope="module")
def draft_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random few-step-LoRA stand-in on convs and linears of the tiny UNet."""
    return make_tiny_lora(tmp_path_factory.mktemp("draft"), seed=5, rank=4, targets=DRAFT_TARGETS)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def unet_batches(gen: TextToImageGenerator) -> tuple[list[int], object]:
    """The batch size of every UNet call from now on (and the hook, to remove)."""
    calls: list[int] = []

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        calls.append(int(sample.shape[0]))

    return calls, gen.pipe.unet.register_forward_pre_hook(record, with_kwargs=True)


def base_weights(unet) -> dict[str, torch.Tensor]:
    """The UNet's own weights by their pre-LoRA names (peft puts them under base_layer)."""
    return {
        k.replace(".base_layer", ""): v.detach().clone()
        for k, v in unet.state_dict().items()
        if "lora_" not in k
    }


def test_draft_is_one_batch_four_steps_fused_and_unfused_exactly(
    tiny_model_dir: Path, draft_lora: Path
) -> None:
    gen = TextToImageGenerator(tiny_config(tiny_model_dir, draft_lora=str(draft_lora)))
    gen.load_model()
    before = base_weights(gen.pipe.unet)
    full = gen.run(GenerationRequest(prompt="a red castle", seed=3, draft=False))
    calls, hook = unet_batches(gen)
    draft = gen.run(
        GenerationRequest(prompt="a red castle", seed=3, draft=True, negative_prompt="blurry")
    )
    hook.remove()
    # CFG 1: one batch per step (no negative half), 4 steps.
    assert calls == [1, 1, 1, 1]
    params = draft.parameters[0]
    assert "Steps: 4," in params and "CFG scale: 1," in params and "Sampler: LCM," in params
    assert "Draft: LCM-LoRA" in params
    assert draft.warnings == [
        "draft: the negative prompt is not used at CFG 1 (full quality uses it)"
    ]
    assert gen.lora.fused is not None and gen.lora.fused.adapter == "draft_lora"
    fused_weights = base_weights(gen.pipe.unet)
    assert any(not torch.equal(fused_weights[k], before[k]) for k in before)

    calls, hook = unet_batches(gen)
    again = gen.run(GenerationRequest(prompt="a red castle", seed=3, draft=False))
    hook.remove()
    assert calls == [2, 2, 2]  # full quality: CFG 7.5 doubles the batch, 3 steps
    assert gen.lora.fused is None
    after = base_weights(gen.pipe.unet)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), "unfuse changed a weight"
    assert np.array_equal(pixels(again.images[0]), pixels(full.images[0]))


def test_fused_draft_draws_what_the_unfused_adapter_draws(
    tiny_model_dir: Path, draft_lora: Path, tiny_lora: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = TextToImageGenerator(tiny_config(tiny_model_dir, draft_lora=str(draft_lora)))
    gen.load_model()
    request = GenerationRequest(prompt="a green garden", seed=8, draft=True)
    fused = gen.run(request).images[0]
    assert gen.lora.fused is not None
    import engine.adapters

    gen.adapters.unfuse()
    monkeypatch.setattr(engine.adapters, "fusable", lambda unet: "test: keep it separate")
    separate = gen.run(request).images[0]
    assert gen.lora.fused is None
    no_lora = gen.run(
        GenerationRequest(
            prompt="a green garden", seed=8, scheduler="LCM", num_inference_steps=4,
            guidance_scale=1.0, draft=False, negative_prompt="",
        )
    ).images[0]  # fmt: skip
    assert np.abs(pixels(fused) - pixels(separate)).max() <= 1  # rounding only
    assert np.abs(pixels(fused) - pixels(no_lora)).mean() > 1  # the LoRA did something
    monkeypatch.undo()
    # With a user's LoRA on top the draft LoRA stays a separate adapter.
    styled = gen.run(
        GenerationRequest(prompt="a green garden", seed=8, draft=True, lora=str(tiny_lora))
    )
    assert len(gen.lora.active) == 2 and gen.lora.fused is None
    assert np.abs(pixels(styled.images[0]) - pixels(fused)).mean() > 1


def test_fp8_or_offloaded_weights_are_never_fused() -> None:
    from engine.lora_fuse import fusable
    from engine.weight_storage import fp8_supported, store_fp8

    pipe = build_tiny_pipeline(0)
    assert fusable(pipe.unet) is None
    pipe.unet.to("meta")
    assert fusable(pipe.unet) == "its weights are offloaded"
    if fp8_supported():
        pipe = build_tiny_pipeline(0)
        store_fp8(pipe, torch.float32)
        assert fusable(pipe.unet) == "its weights are stored in fp8"


def test_draft_decodes_with_the_tiny_vae_for_that_request_only(
    tiny_model_dir: Path, draft_lora: Path, tmp_path: Path
) -> None:
    from diffusers import AutoencoderTiny

    from engine.config import OptimizationConfig

    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(16, 16),
        decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    ).save_pretrained(tmp_path / "taesd")
    cfg = tiny_config(tiny_model_dir, draft_lora=str(draft_lora))
    cfg.optimization = OptimizationConfig(tiny_vae=str(tmp_path / "taesd"))
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    tiny = gen.slot.tiny_vae
    decodes: list[int] = []
    original = tiny.decode
    tiny.decode = lambda z, *a, **k: decodes.append(z.shape[0]) or original(z, *a, **k)
    draft = gen.run(GenerationRequest(prompt="a tree", seed=1, draft=True, num_images=2))
    assert decodes == [2] and [im.size for im in draft.images] == [(64, 64)] * 2
    assert type(gen.pipe.vae).__name__ == "AutoencoderKL"  # not swapped for everyone
    full = gen.run(GenerationRequest(prompt="a tree", seed=1, draft=False))
    assert decodes == [2]  # full quality keeps the full VAE
    tiny.decode = original
    # The same draft through the full VAE: the tiny one really drew the draft.
    cfg.optimization = OptimizationConfig()
    plain = TextToImageGenerator(cfg)
    plain.load_model()
    through_full = plain.run(GenerationRequest(prompt="a tree", seed=1, draft=True))
    assert np.abs(pixels(through_full.images[0]) - pixels(draft.images[0])).mean() > 1
    assert full.images[0].size == (64, 64)


def test_cpu_hosts_draft_by_default_and_explicit_choices_win(
    tiny_model_dir: Path, draft_lora: Path
) -> None:
    gen = TextToImageGenerator(
        tiny_config(tiny_model_dir, draft_lora=str(draft_lora), draft_default="auto")
    )
    gen.load_model()
    assert gen.device == "cpu" and gen.draft_by_default()
    # The server default is the bot's to apply (/imagine); the engine drafts only when asked.
    assert not gen.prepare(GenerationRequest(prompt="a dog")).draft
    resolved = gen.prepare(GenerationRequest(prompt="a dog", draft=True))
    assert resolved.draft and resolved.num_inference_steps == 4
    assert resolved.guidance_scale == 1.0 and resolved.scheduler == "LCM"
    assert resolved.negative_prompt == ""  # the default negative is for full quality
    assert not gen.prepare(GenerationRequest(prompt="a dog", draft=False)).draft
    assert gen.prepare(GenerationRequest(prompt="a dog", draft=True, num_inference_steps=6)).draft
    # auto is full quality on a GPU; on and off say it for every device.
    assert not gen.adapters.draft_by_default("cuda")
    for setting, expected in (("on", True), ("off", False)):
        gen.config.generation = gen.config.generation.model_copy(update={"draft_default": setting})
        assert gen.adapters.draft_by_default("cuda") is expected


def test_default_draft_without_its_lora_falls_back_to_full_quality(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.front_door import EngineDoor

    missing = tmp_path / "gone" / "lcm.safetensors"
    cfg = tiny_config(tiny_model_dir, draft_lora=str(missing), draft_default="on")
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    with caplog.at_level(logging.WARNING, logger="engine"):
        assert not gen.draft_by_default() and not gen.draft_by_default()
        first = gen.run(GenerationRequest(prompt="a cat", seed=2, draft=gen.draft_by_default()))
    assert not first.request.draft
    assert first.request.num_inference_steps == 3  # the full-quality settings
    warned = [r for r in caplog.records if "draft LoRA" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    # An explicit draft is still refused in words, before anything is queued.
    door = EngineDoor(gen, between_jobs=None)  # type: ignore[arg-type]
    with pytest.raises(RequestError) as refused:
        door.prepare(GenerationRequest(prompt="a cat", draft=True))
    assert refused.value.field == "draft" and "leave draft off" in str(refused.value)
    with pytest.raises(EngineError, match="drafts are not available"):
        gen.run(GenerationRequest(prompt="a cat", draft=True))


def test_fast_mode_names_still_work(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from engine.__main__ import build_parser
    from engine.config import load_config
    from storage.jobs import decode_payload

    monkeypatch.setenv("GEN_FAST_STEPS", "6")
    monkeypatch.setenv("GEN_FAST_LORA", "/somewhere/lcm.safetensors")
    with caplog.at_level(logging.WARNING):
        generation = load_config(env_file=None).generation
    assert generation.draft_steps == 6 and generation.draft_lora == "/somewhere/lcm.safetensors"
    assert generation.draft_guidance == 1.0  # the new default (fast mode's was 1.5)
    assert "GEN_FAST_STEPS is deprecated; use GEN_DRAFT_STEPS" in caplog.text
    # A job stored by fast mode decodes as a draft; one stored without it as full quality.
    old, _ = decode_payload("generate", {"request": {"prompt": "a cat", "fast": True}})
    assert isinstance(old, GenerationRequest) and old.draft is True
    plain, _ = decode_payload("generate", {"request": {"prompt": "a cat", "fast": False}})
    assert plain.draft is False
    parser = build_parser()
    assert parser.parse_args(["x", "--fast"]).draft is True
    assert parser.parse_args(["x", "--draft"]).draft is True
    assert parser.parse_args(["x"]).draft is False  # GEN_DRAFT_DEFAULT is the bot's
    assert "--fast" not in parser.format_help()


def test_upscaling_a_draft_png_is_full_quality(tiny_model_dir: Path, draft_lora: Path) -> None:
    from engine.img2img import upscale_request

    gen = TextToImageGenerator(tiny_config(tiny_model_dir, draft_lora=str(draft_lora)))
    gen.load_model()
    image = gen.run(GenerationRequest(prompt="a red star", seed=6, draft=True)).images[0]
    request = upscale_request(image, 2.0, 0.35, None, None, None, None, None, None)
    assert request.draft is False and request.seed == 6 and request.prompt == "a red star"
    assert request.scheduler is None and request.num_inference_steps is None
    assert request.guidance_scale is None  # the draft's LCM, 4 steps and CFG 1 are not kept


def test_a_model_folder_ships_its_own_draft_lora(
    tiny_model_dir: Path, draft_lora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `draft_lora/` beside model_index.json is the drafts' LoRA unless GEN_DRAFT_LORA is set."""
    import shutil

    from engine.adapters import draft_lora_missing, draft_lora_ref, model_folder
    from engine.lora import WEIGHT_NAME

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default hub LoRA is not to be had
    folder = tmp_path / "with-draft"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "draft_lora").mkdir()
    shutil.copy(draft_lora, folder / "draft_lora" / WEIGHT_NAME)
    cfg = tiny_config(folder, draft_default="on")
    cfg.model = cfg.model.model_copy(update={"cache_dir": tmp_path / "cache"})
    assert model_folder(str(folder)) == folder
    assert draft_lora_ref(cfg, folder) == str(folder / "draft_lora")
    assert draft_lora_missing(cfg, folder) is None
    assert draft_lora_missing(cfg) is not None  # without the folder: the uncached hub default
    gen = TextToImageGenerator(cfg)
    assert gen.draft_by_default()  # before a load too: MODEL_ID's folder ships one
    gen.load_model()
    # As /imagine does: the server default written into the request.
    result = gen.run(GenerationRequest(prompt="a red castle", seed=3, draft=gen.draft_by_default()))
    assert result.request.draft and gen.lora.fused is not None
    assert gen.lora.resident["draft_lora"] == folder / "draft_lora" / WEIGHT_NAME
    gen.unload()
    # auto drafts by default only with GEN_DRAFT_LORA's LoRA on the disk (here it is not).
    cfg.generation = cfg.generation.model_copy(update={"draft_default": "auto"})
    assert not TextToImageGenerator(cfg).draft_by_default()
    # An explicit GEN_DRAFT_LORA wins, even over a shipped one (here a missing file).
    explicit = tiny_config(folder, draft_lora=str(tmp_path / "gone.safetensors"))
    assert draft_lora_ref(explicit, folder) == str(tmp_path / "gone.safetensors")
    assert draft_lora_missing(explicit, folder) is not None


def test_a_default_draft_stays_off_on_a_model_of_another_family(
    tiny_model_dir: Path, draft_lora: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.front_door import EngineDoor
    from engine.lora import inspect_lora_file
    from tests.tiny_sd import save_tiny_pipeline

    # The draft LoRA's cross-attention keys tell its family, in both layouts it comes in.
    assert inspect_lora_file(draft_lora).text_width == 32
    kohya = make_tiny_lora(tmp_path / "kohya", seed=6, kohya=True, cross_attention_dim=48)
    assert inspect_lora_file(kohya).text_width == 48
    wide = save_tiny_pipeline(tmp_path / "wide", seed=0, cross_attention_dim=48)
    cfg = tiny_config(tiny_model_dir, draft_lora=str(draft_lora), draft_default="on")
    cfg.model = cfg.model.model_copy(update={"choices": f"tiny={tiny_model_dir},wide={wide}"})
    gen = TextToImageGenerator(cfg)
    gen.load_model()
    door = EngineDoor(gen, between_jobs=None)  # type: ignore[arg-type]
    assert door.draft_by_default() and door.draft_by_default("tiny")
    with caplog.at_level(logging.INFO, logger="engine"):
        # Drafting "wide" would load a LoRA made for another width and fail the job.
        assert not door.draft_by_default("wide") and not door.draft_by_default("wide")
    told = [r for r in caplog.records if "full quality unless they ask" in r.getMessage()]
    assert len(told) == 1
