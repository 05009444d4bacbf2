"""img2img and upscale in the engine: requests, the shared pipeline, metadata, VRAM estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import GenerationConfig
from engine.img2img import img2img_pipeline, source_parameters
from engine.init_image import fit_size
from engine.metadata import parse_parameters, read_parameters
from engine.requests import GenerationRequest, resolve_request
from engine.vram import estimate_vram


@pytest.fixture(scope="module")
def source_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96x64 PNG with a red square on blue (no parameters text)."""
    image = Image.new("RGB", (96, 64), (30, 70, 220))
    image.paste((220, 30, 30), (30, 16, 62, 48))
    path = tmp_path_factory.mktemp("src") / "source.png"
    image.save(path)
    return path


def _resolve(**fields: object):
    return resolve_request(
        GenerationRequest(prompt="a cat", **fields),  # type: ignore[arg-type]
        GenerationConfig(width=64, height=64, num_inference_steps=4),
        {},
    )


def test_request_validation_is_precise(source_png: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [
        ({"init_image": str(source_png), "strength": 1.5}, "strength: must be between 0.05"),
        ({"init_image": str(source_png), "strength": 0.01}, "strength: must be between 0.05"),
        ({"strength": 0.5}, "strength: only applies with an init image"),
        ({"upscale": 2.0}, "upscale: needs an init image"),
        ({"init_image": str(tmp_path / "gone.png")}, "init_image: no such file"),
        ({"init_image": str(text)}, "init_image: notes.png is not a readable image"),
        ({"init_image": str(source_png), "upscale": 40.0}, "upscale: factor must be"),
        ({"init_image": str(source_png), "strength": 0.1}, "leaves no denoising step"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            _resolve(**fields)


def test_upscale_beyond_the_size_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 800)).save(big)
    with pytest.raises(ValueError, match=r"upscale: 2x of 1200x800 is 2400x1600, over"):
        _resolve(init_image=str(big), upscale=2.0)


def test_init_size_defaults_keep_aspect_and_native_pixels(source_png: Path) -> None:
    resolved = _resolve(init_image=str(source_png))
    assert resolved.strength == 0.6
    assert (resolved.width % 8, resolved.height % 8) == (0, 0)
    assert resolved.width > resolved.height  # 3:2 source stays landscape
    assert (resolved.width, resolved.height) == fit_size(96, 64, 64, 64) == (72, 64)  # 64 px floor
    assert fit_size(96, 64, 512, 512) == (624, 416)  # 3:2 within 512x512 pixels
    upscale = _resolve(init_image=str(source_png), upscale=2.0)
    assert (upscale.width, upscale.height, upscale.strength) == (192, 128, 0.35)
    assert fit_size(4000, 1000, 512, 512) == (1024, 256)


def test_img2img_reuses_the_loaded_modules(tiny_generator) -> None:
    pipe = tiny_generator.pipe
    i2i = img2img_pipeline(pipe)
    for name in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        assert getattr(i2i, name) is getattr(pipe, name), name
    assert pipe.unet.dtype == tiny_generator.slot.dtype


def test_img2img_generates_at_the_init_size_with_metadata(tiny_generator, source_png) -> None:
    gen = tiny_generator
    images = gen.generate(
        "a dog", init_image=str(source_png), strength=0.5, seed=3, width=72, height=64
    )
    assert images[0].size == (72, 64)
    fields = parse_parameters(images[0].info["parameters"])
    assert fields["Denoising strength"] == "0.5"
    assert gen.last_result is not None and gen.last_result.request.strength == 0.5
    # A PIL image and its file give the same picture (same seed, same pixels).
    again = gen.generate(
        "a dog", init_image=Image.open(source_png), strength=0.5, seed=3, width=72, height=64
    )
    assert np.array_equal(np.asarray(images[0]), np.asarray(again[0]))
    other = gen.generate(
        "a dog", init_image=str(source_png), strength=1.0, seed=3, width=72, height=64
    )
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))


def test_upscale_reads_the_parameters_and_restores_vae_tiling(tiny_generator, tmp_path) -> None:
    gen = tiny_generator
    made = gen.generate("a red circle", seed=77, num_inference_steps=4)
    (path,) = gen.save_images(made, output_dir=tmp_path)
    assert not gen.pipe.vae.use_tiling
    big = gen.upscale(path, factor=2.0)
    assert big.size == (128, 128)
    assert not gen.pipe.vae.use_tiling  # tiling only for the upscale itself
    fields = parse_parameters(big.info["parameters"])
    assert fields["prompt"] == "a red circle"
    assert fields["Seed"] == "77"
    assert fields["Hires upscale"] == "2"
    assert fields["Hires upscaler"] == "Lanczos"
    assert fields["Denoising strength"] == "0.35"
    saved = gen.save_images([big], output_dir=tmp_path)[0]
    assert source_parameters(saved)["seed"] == 77
    assert "Hires upscale: 2" in (read_parameters(saved) or "")


def test_upscale_without_parameters_needs_a_prompt(tiny_generator, source_png) -> None:
    with pytest.raises(ValueError, match="prompt: the image has no parameters"):
        tiny_generator.upscale(source_png)


def test_vram_estimate_covers_img2img_and_upscale() -> None:
    plain = estimate_vram(width=512, height=512, vae_slicing=True)
    i2i = estimate_vram(width=512, height=512, vae_slicing=True, img2img=True)
    assert i2i.total_mb >= plain.total_mb
    assert any("img2img" in n for n in i2i.notes)
    untiled = estimate_vram(width=1024, height=1024, img2img=True)
    tiled = estimate_vram(width=1024, height=1024, img2img=True, vae_tiling=True)
    assert tiled.vae_decode_mb < untiled.vae_decode_mb / 3
