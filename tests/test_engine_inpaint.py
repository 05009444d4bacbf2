"""Inpaint and outpaint on the tiny model: request fields, refusals, masks, geometry, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.__main__ import main
from engine.config import GenerationConfig
from engine.inpaint import (
    grid_mask,
    is_inpainting_unet,
    latent_cover,
    outpaint_canvas,
    preset_mask,
    soft_mask,
)
from engine.metadata import parse_parameters
from engine.region import outpaint_layout, pan_extension, region_size
from engine.requests import GenerationRequest, resolve_request
from storage.jobs import decode_payload, encode_payload
from tests.test_engine_cli import run_cli
from tests.tiny_sd import build_tiny_pipeline, save_tiny_inpainting_pipeline

DEFAULTS = GenerationConfig(width=64, height=64, num_inference_steps=4)


@pytest.fixture
def source_png(tmp_path: Path) -> Path:
    """A 64x64 picture with detail everywhere (so any change shows), with a parameters text."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "source.png"
    from engine.metadata import save_png

    text = (
        "a red circle\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, Seed: 77, Size: 64x64"
    )
    save_png(Image.fromarray(pixels), path, text)
    return path


@pytest.fixture
def mask_png(tmp_path: Path) -> Path:
    """A 200x200 mask (any size is resized): white over the middle third."""
    path = tmp_path / "mask.png"
    grid_mask(200, 200, {4}).save(path)
    return path


def _resolve(**fields):
    return resolve_request(GenerationRequest(prompt="a cat", **fields), DEFAULTS, {})


def test_region_fields_survive_the_job_store(source_png: Path, mask_png: Path) -> None:
    request = GenerationRequest(
        prompt="a cat", init_image=str(source_png), mask_image=str(mask_png), mask_blur=6,
        mask_region=None, outpaint=None, strength=0.8,
    )  # fmt: skip
    stored = json.loads(json.dumps(encode_payload(request, 1.5)))
    back, tag = decode_payload("generate", stored)
    assert back == request and tag == 1.5
    pan = replace(request, mask_image=None, outpaint="pan:left")
    assert decode_payload("generate", json.loads(json.dumps(encode_payload(pan, None))))[0] == pan


def test_resolve_decides_region_fields(source_png: Path, mask_png: Path) -> None:
    inpaint = _resolve(init_image=str(source_png), mask_image=str(mask_png))
    assert (inpaint.width, inpaint.height, inpaint.mask_blur, inpaint.strength) == (64, 64, 4, 1.0)
    region = _resolve(init_image=str(source_png), mask_region=" 8,0, 4", mask_blur=0)
    assert (region.mask_region, region.mask_blur) == ("0,4,8", 0)
    assert _resolve(init_image=str(source_png), mask_region="Center").mask_region == "centre"
    zoom = _resolve(init_image=str(source_png), outpaint="zoom:2x")
    assert (zoom.outpaint, zoom.width, zoom.height) == ("zoom:2", 64, 64)
    pan = _resolve(init_image=str(source_png), outpaint="pan:up")
    assert (pan.width, pan.height) == (64, 96)
    # The scheduler stores the decided size back in the request: resolving again agrees.
    again = _resolve(init_image=str(source_png), outpaint="pan:up", width=64, height=96)
    assert (again.width, again.height) == (64, 96)


def test_region_refusals_name_the_field(source_png: Path, mask_png: Path, tmp_path: Path) -> None:
    black = tmp_path / "black.png"
    Image.new("L", (32, 32), 0).save(black)
    image = str(source_png)
    cases = [
        ({"mask_image": str(mask_png)}, "mask_image: needs an init image"),
        ({"outpaint": "zoom:2"}, "outpaint: needs an init image"),
        ({"mask_blur": 4}, "mask_blur: only applies with a mask"),
        ({"init_image": image, "mask_blur": 4}, "mask_blur: only applies with a mask"),
        ({"init_image": image, "mask_region": "0", "mask_blur": 99}, "mask_blur: must be between"),
        ({"init_image": image, "mask_region": "0", "mask_blur": 2.5}, "mask_blur: must be a whole"),
        ({"init_image": image, "mask_image": str(tmp_path / "gone.png")}, "mask_image: no such"),
        ({"init_image": image, "mask_image": str(black)}, "black.png is all black"),
        ({"init_image": image, "mask_region": "9"}, "mask_region: must be cell numbers 0-8"),
        ({"init_image": image, "mask_region": "ears"}, "mask_region: must be cell numbers"),
        ({"init_image": image, "mask_region": "0", "mask_image": str(mask_png)}, "not both"),
        ({"init_image": image, "outpaint": "zoom:3"}, "outpaint: must be one of zoom:1.5"),
        ({"init_image": image, "outpaint": "pan:left", "mask_region": "0"}, "makes its own mask"),
        ({"init_image": image, "outpaint": "zoom:2", "upscale": 2.0}, "upscale: cannot be"),
        ({"init_image": image, "outpaint": "pan:up", "width": 64, "height": 64}, "makes 64x96"),
        ({"init_image": image, "mask_region": "0", "strength": 0}, "strength: must be between"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError) as info:
            _resolve(**fields)
        text = str(info.value)
        assert message in text and "\n" not in text, (fields, text)


def test_masks_and_soft_edge() -> None:
    grid = np.asarray(grid_mask(90, 60, {0, 4}))
    assert grid[:20, :30].all() and grid[20:40, 30:60].all()
    assert grid.sum() == 2 * 30 * 20 * 255
    left = np.asarray(preset_mask(64, 48, "left half"))
    assert left[:, :32].all() and not left[:, 32:].any()
    with pytest.raises(ValueError, match="mask_region: cell 9"):
        grid_mask(30, 30, {9})
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (20, 20, 30, 30))
    for blur in (0, 1, 3, 4, 8):
        soft = np.asarray(soft_mask(mask, blur))
        ys, xs = np.nonzero(soft)
        assert (xs.min(), xs.max(), ys.min(), ys.max()) == (
            20 - blur,
            29 + blur,
            20 - blur,
            29 + blur,
        )
        assert (soft[20:30, 20:30] == 255).all()  # the white part is repainted whole
    # A one-pixel stroke still covers its whole latent cell.
    stroke = Image.new("L", (32, 32), 0)
    stroke.putpixel((9, 9), 255)
    cover = np.asarray(latent_cover(stroke, 8))
    assert cover[8:16, 8:16].all() and cover.sum() == 64 * 255


def test_outpaint_geometry() -> None:
    assert outpaint_layout(64, 64, "zoom:2").box == (16, 16, 48, 48)
    layout = outpaint_layout(512, 768, "zoom:1.5")
    assert layout.canvas == (512, 768) and layout.box == (85, 128, 426, 640)
    for side, canvas, box in [
        ("left", (96, 64), (32, 0, 96, 64)),
        ("right", (96, 64), (0, 0, 64, 64)),
        ("up", (64, 96), (0, 32, 64, 96)),
        ("down", (64, 96), (0, 0, 64, 64)),
    ]:
        assert outpaint_layout(64, 64, f"pan:{side}") == type(layout)(canvas, box), side
    assert pan_extension(520) == 256 and outpaint_layout(520, 512, "pan:right").canvas == (776, 512)
    with pytest.raises(ValueError, match="1536x1024 makes 2304x1024, over the largest size"):
        outpaint_layout(1536, 1024, "pan:right")
    assert region_size(100, 70, (512, 512)) == (96, 72)  # sides to the nearest multiple of 8
    assert region_size(3000, 2000, (512, 512)) == (624, 416)  # too big: native pixel count
    picture = Image.new("RGB", (64, 64), (200, 10, 10))
    canvas, mask, _ = outpaint_canvas(picture, "pan:right", overlap=4)
    pixels = np.asarray(canvas)
    assert canvas.size == (96, 64) and (pixels[:, :64] == (200, 10, 10)).all()
    assert np.abs(pixels[:, 64:].astype(int) - (200, 10, 10)).max() < 3  # filled from the edge
    hard = np.asarray(mask)
    assert not hard[:, :60].any() and hard[:, 60:].all()  # new strip + 4 px overlap


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB"))).any(axis=-1)


def test_inpaint_pastes_back_the_original_outside_the_mask(
    tiny_generator, source_png: Path, mask_png: Path
) -> None:
    original = Image.open(source_png).convert("RGB")
    out = tiny_generator.inpaint(source_png, mask_png, prompt="a cat", mask_blur=4, seed=3)
    assert out.size == (64, 64)
    changed = _changed(out, original)
    near = np.zeros((64, 64), bool)  # the mask (cell 4 of 64 px: 21-43) and its 4 px band
    near[21 - 4 : 43 + 4, 21 - 4 : 43 + 4] = True
    assert not changed[~near].any()  # pixel-identical beyond the blur band
    assert changed[21:43, 21:43].mean() > 0.9
    fields = parse_parameters(out.info["parameters"])
    assert fields["prompt"] == "a cat" and fields["Seed"] == "3"
    assert (fields["Mask blur"], fields["Inpaint area"], fields["Masked content"]) == (
        "4", "Whole picture", "original"
    )  # fmt: skip
    assert fields["Denoising strength"] == "1"
    # Without a prompt, prompt, negative prompt, sampler and seed are the image's own.
    again = tiny_generator.inpaint(str(source_png), "left half", strength=0.5, mask_blur=0)
    fields = parse_parameters(again.info["parameters"])
    assert (fields["prompt"], fields["negative_prompt"], fields["Seed"]) == (
        "a red circle", "blurry", "77"
    )  # fmt: skip
    assert (fields["Sampler"], fields["Mask region"]) == ("Euler a", "left half")
    assert not _changed(again, original)[:, 32:].any()


def test_outpaint_keeps_the_old_pixels(tiny_generator, source_png: Path) -> None:
    original = Image.open(source_png).convert("RGB")
    zoomed = tiny_generator.outpaint(source_png, zoom=2, prompt="a cat", seed=1, mask_blur=2)
    assert zoomed.size == (64, 64)
    shrunk = np.asarray(original.resize((32, 32), Image.Resampling.LANCZOS))
    # The old picture sits in 16-48; overlap 2 + blur 2 px along its edges is blended.
    assert (np.asarray(zoomed)[20:44, 20:44] == shrunk[4:28, 4:28]).all()
    assert parse_parameters(zoomed.info["parameters"])["Masked content"] == "fill"
    panned = tiny_generator.outpaint(source_png, pan="right", prompt="a cat", seed=1)
    assert panned.size == (96, 64)
    assert (np.asarray(panned)[:, :56] == np.asarray(original)[:, :56]).all()
    assert _changed(panned.crop((64, 0, 96, 64)), Image.new("RGB", (32, 64))).any()
    with pytest.raises(ValueError, match="either zoom"):
        tiny_generator.outpaint(source_png, zoom=2, pan="up")


def test_nine_channel_unet_is_used_natively(tmp_path: Path, source_png: Path) -> None:
    from engine.generator import TextToImageGenerator
    from tests.conftest import tiny_config

    folder = save_tiny_inpainting_pipeline(tmp_path / "tiny-inpainting", seed=5)
    gen = TextToImageGenerator(tiny_config(folder))
    gen.load_model()
    assert is_inpainting_unet(gen.pipe) and not is_inpainting_unet(build_tiny_pipeline())
    seen = []
    out = gen.inpaint(source_png, {0}, prompt="a cat", seed=2, mask_blur=0,
                      progress=lambda step, total, latents: seen.append(latents.shape[1]))  # fmt: skip
    assert seen and set(seen) == {4}  # 4 latent channels out; the UNet takes 9 in
    original = Image.open(source_png).convert("RGB")
    assert not _changed(out, original)[22:, 22:].any() and _changed(out, original)[:21, :21].any()
    (plain,) = gen.generate("a cat", seed=1)  # text-to-image repaints the whole picture
    assert plain.size == (64, 64)
    gen.unload()


def test_cli_inpaint_and_outpaint(tiny_model_dir: Path, source_png: Path, mask_png: Path) -> None:
    out = source_png.parent / "out"
    model = ["--model", str(tiny_model_dir), "--steps", "3", "--out", str(out), "--quiet"]
    proc = run_cli("inpaint", str(source_png), "--mask", str(mask_png), "--mask-blur", "2",
                   *model, cwd=source_png.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (made,) = sorted(out.glob("inpaint_*.png"))
    assert f"{made}  seed=77" in proc.stdout  # the image's own seed
    with Image.open(made) as image:
        fields = parse_parameters(image.info["parameters"])
    assert (fields["prompt"], fields["Mask blur"]) == ("a red circle", "2")
    proc = run_cli("outpaint", str(made), "--pan", "down", "--prompt", "a dog", "--seed", "4",
                   *model, cwd=source_png.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wide,) = sorted(out.glob("outpaint_*.png"))
    with Image.open(wide) as image:
        assert image.size == (64, 96)
        assert parse_parameters(image.info["parameters"])["Outpaint"] == "pan:down"


def test_cli_bad_region_input_exits_2_with_one_line(
    source_png: Path, mask_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    black = tmp_path / "black.png"
    Image.new("L", (8, 8), 0).save(black)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(plain)
    image = str(source_png)
    cases = [
        (["inpaint", str(tmp_path / "gone.png"), "--region", "0"], "error: image: no such file"),
        (["inpaint", image, "--mask", str(tmp_path / "no.png")], "--mask: no such file"),
        (["inpaint", image, "--mask", str(black)], "--mask: black.png is all black"),
        (["inpaint", image, "--region", "ears"], "--region: must be cell numbers 0-8"),
        (["inpaint", image, "--region", "0", "--mask-blur", "-1"], "--mask-blur: must be between"),
        (["inpaint", image, "--region", "0", "--strength", "2"], "--strength: must be between"),
        (["inpaint", str(plain), "--region", "0"], "prompt: the image has no parameters"),
        (["outpaint", image, "--pan", "down", "--steps", "0"], "--steps: must be between"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "\n" not in err, err
    with pytest.raises(SystemExit) as info:  # argparse: zoom is 1.5 or 2 only
        main(["outpaint", image, "--zoom", "3"])
    assert info.value.code == 2
