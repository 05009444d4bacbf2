"""`python -m engine --init-image` and `python -m engine upscale`: happy paths and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.__main__ import main
from engine.metadata import parse_parameters
from tests.test_engine_cli import run_cli


@pytest.fixture
def source_png(tmp_path: Path) -> Path:
    """A 64x64 red square on blue."""
    image = Image.new("RGB", (64, 64), (30, 70, 220))
    image.paste((220, 30, 30), (16, 16, 48, 48))
    path = tmp_path / "source.png"
    image.save(path)
    return path


def test_cli_img2img_then_upscale(tiny_model_dir: Path, source_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "a castle", "--model", str(tiny_model_dir), "--init-image", str(source_png),
        "--strength", "0.5", "--steps", "4", "--seed", "5", "--width", "64", "--height", "64",
        "--out", str(out), "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (made,) = sorted(out.glob("gen_*.png"))
    with Image.open(made) as image:
        assert image.size == (64, 64)
        fields = parse_parameters(image.info["parameters"])
    assert fields["Denoising strength"] == "0.5" and fields["Seed"] == "5"
    proc = run_cli(
        "upscale", str(made), "--model", str(tiny_model_dir), "--steps", "3",
        "--out", str(out), "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (big,) = sorted(out.glob("upscale_*.png"))
    assert f"{big}  seed=5" in proc.stdout  # the seed read back from the image
    with Image.open(big) as image:
        assert image.size == (128, 128)
        fields = parse_parameters(image.info["parameters"])
    assert fields["prompt"] == "a castle"
    assert (fields["Hires upscale"], fields["Hires upscaler"]) == ("2", "Lanczos")
    assert fields["Denoising strength"] == "0.35"


def test_cli_bad_image_input_exits_2_with_one_line(
    source_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    big = tmp_path / "big.png"
    Image.new("RGB", (1536, 1024)).save(big, pnginfo=None)
    # Each refusal names the flag (or argument) the user typed.
    cases = [
        (["a cat", "--init-image", str(tmp_path / "gone.png")], "--init-image: no such file"),
        (["a cat", "--init-image", str(not_image)], "notes.png is not a readable image"),
        (["a cat", "--init-image", str(source_png), "--strength", "1.5"], "--strength: must be"),
        (["a cat", "--strength", "0.5"], "--strength: only applies with an init image"),
        (["upscale", str(tmp_path / "gone.png")], "error: image: no such file"),
        (["upscale", str(not_image), "--prompt", "x"], "notes.png is not a readable image"),
        (["upscale", str(source_png), "--prompt", "x", "--strength", "0"], "--strength: must be"),
        (["upscale", str(big), "--prompt", "x"], "--factor: 2x of 1536x1024 is 3072x2048, over"),
        (["upscale", str(source_png)], "prompt: the image has no parameters"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "\n" not in err, err
