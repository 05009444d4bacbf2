"""The command line end to end, in a subprocess, writing real PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.metadata import parse_parameters

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "GEN_", "OPT_"))}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_writes_pngs_with_parameters(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "a castle",
        "--model", str(tiny_model_dir),
        "--steps", "3", "--cfg", "8.0", "--seed", "42",
        "--width", "72", "--height", "64", "--num", "2",
        "--negative", "blurry", "--scheduler", "Euler a",
        "--out", str(out), "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("gen_*.png"))
    assert len(files) == 2
    assert f"{files[0]}  seed=42" in proc.stdout and f"{files[1]}  seed=43" in proc.stdout
    with Image.open(files[1]) as image:
        assert image.size == (72, 64)
        params = parse_parameters(image.info["parameters"])
    assert params["prompt"] == "a castle" and params["negative_prompt"] == "blurry"
    assert params["Seed"] == "43" and params["Sampler"] == "Euler a"
    assert params["CFG scale"] == "8" and params["Steps"] == "3"


def test_cli_with_lora(tiny_model_dir: Path, tiny_lora: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "a castle", "--model", str(tiny_model_dir), "--steps", "2", "--width", "64",
        "--height", "64", "--lora", str(tiny_lora), "--lora-scale", "0.7",
        "--out", str(tmp_path), "--quiet", "--seed", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    png = next(tmp_path.glob("gen_*.png"))
    with Image.open(png) as image:
        assert "Lora: lora_a0, Lora weight: 0.7," in image.info["parameters"]


def test_cli_bad_input_one_line_nonzero(tiny_model_dir: Path, tmp_path: Path) -> None:
    """In a real process: exit code 2, one line on stderr, no PNG (the other refusals below)."""
    proc = run_cli("a dog", "--model", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and "model: path not found" in lines[0], proc.stderr
    assert not list(tmp_path.glob("**/*.png"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--num", "0"), "--num: must be between 1 and 8 (got 0)"),
        (("--width", "0"), "--width: must be a multiple of 8 between 64 and 2048 (got 0)"),
        (("--height", "0"), "--height: must be a multiple of 8 between 64 and 2048 (got 0)"),
        (("--cfg", "-1"), "--cfg: must be between 0 and 30 (got -1.0)"),
        (("--steps", "0"), "--steps: must be between 1 and 150 (got 0)"),
        (("--steps", "151"), "--steps: must be between 1 and 150 (got 151)"),
        (("--width", "100"), "--width: must be a multiple of 8 between 64 and 2048 (got 100)"),
        (
            ("--scheduler", "nope"),
            "--scheduler: unknown sampler 'nope'; choose one of: DPM++ 2M Karras, "
            "DPM++ 2M, DPM++ SDE Karras, DPM++ 2M SDE Karras, Euler, Euler a, DDIM, UniPC, LMS, Heun, "
            "PNDM, LCM, TCD",
        ),
        (("--lora", "missing.safetensors"), "--lora: file missing.safetensors was not found"),
        (("--strength", "0.5"), "--strength: only applies with an init image"),
        (
            ("--draft",),
            "--draft: the draft LoRA 'latent-consistency/lcm-lora-sdv1-5' is not in the cache "
            "and the hub is switched off (HF_HUB_OFFLINE or MODEL_LOCAL_FILES_ONLY); run once "
            "online or set GEN_DRAFT_LORA to a local file",
        ),
    ],
)
def test_cli_zero_and_out_of_range_refused_in_process(
    extra: tuple[str, ...],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refusals without a subprocess each: one line, exit code 2, nothing written."""
    import engine.__main__ as cli

    # Silencing the libraries is for the command line's own process, not for this one.
    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
    monkeypatch.chdir(tmp_path)
    # Set, the hub LoRA wins over the demo's own draft_lora/ (then --draft has no LoRA here).
    monkeypatch.setenv("GEN_DRAFT_LORA", "latent-consistency/lcm-lora-sdv1-5")
    main = cli.main
    assert main(["a dog", "--model", "demo", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]
    assert not list(tmp_path.iterdir())


def test_cli_prints_no_library_noise_on_the_demo_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "a red circle on a blue background", "--model", "demo", "--steps", "2",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("gen_*.png"))) == 1
    assert "torchvision" not in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if "warn" in line.lower()]
    # What is left on stderr is our own progress bar (tqdm redraws with carriage returns).
    parts = [p.strip() for p in proc.stderr.replace("\r", "\n").splitlines() if p.strip()]
    assert parts and all(p.startswith("generating:") for p in parts), proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(out / "gen_"))


def test_importing_the_engine_leaves_library_logging_alone() -> None:
    # A fresh interpreter: in this one, an in-process CLI run by another test may have quieted them.
    code = (
        "import logging, os\n"
        "import engine.__main__, engine.generator\n"
        "from diffusers.utils import logging as d\n"
        "assert d.get_verbosity() == logging.WARNING, d.get_verbosity()\n"
        "assert d.is_progress_bar_enabled()\n"
        "assert 'TRANSFORMERS_VERBOSITY' not in os.environ\n"
        "print('untouched')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0 and "untouched" in proc.stdout, proc.stderr[-2000:]


def test_estimate_vram_loads_no_model(tmp_path: Path) -> None:
    proc = run_cli(
        "test", "--estimate-vram", "--width", "768", "--height", "768",
        "--model", "someone/never-downloaded", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Estimated peak VRAM" in proc.stdout and "weights unet" in proc.stdout
    assert not (tmp_path / "models").exists()


def _driver_mb(stdout: str) -> int:
    line = next(x for x in stdout.splitlines() if x.startswith("Expected on the driver"))
    return int(line.split(":")[1].split()[0].replace(",", ""))


def test_estimate_vram_shows_the_preset_and_the_driver_figure(tmp_path: Path) -> None:
    """--estimate-vram shows allocated and driver figures; --weight-storage overrides the preset."""
    fp8 = run_cli("test", "--estimate-vram", "--preset", "3gb", cwd=tmp_path)
    assert fp8.returncode == 0, fp8.stderr
    assert "preset 3gb: fp8 weight storage, VAE slicing, VAE tiling" in fp8.stdout
    assert "UNet and VAE weights stored in fp8" in fp8.stdout
    assert "CUDA context" in fp8.stdout and _driver_mb(fp8.stdout) < 3072
    off = run_cli(
        "test", "--estimate-vram", "--preset", "3gb", "--weight-storage", "off", cwd=tmp_path
    )
    assert off.returncode == 0, off.stderr
    assert "stored in fp8" not in off.stdout
    assert _driver_mb(off.stdout) > _driver_mb(fp8.stdout) + 800  # the UNet and VAE at 2 bytes


def test_cli_inline_loras_and_weights(
    tiny_model_dir: Path,
    tiny_lora: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """<lora:NAME:w> names a folder under --lora-dir or STORAGE_LORA_DIR (NAME/final); weights too."""
    import shutil

    import engine.__main__ as cli

    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
    run = tmp_path / "lora" / "ink" / "final"
    run.mkdir(parents=True)
    shutil.copy(tiny_lora, run / tiny_lora.name)
    common = ["--model", str(tiny_model_dir), "--lora-dir", str(tmp_path / "lora")]
    assert cli.main(["a castle <lora:nope:0.7>", *common, "--out", str(tmp_path)]) == 2
    assert "unknown LoRA 'nope'" in capsys.readouterr().err
    prompt = "a castle <lora:ink:0.7> (red:1.2)"
    out = tmp_path / "out"
    # Without --lora-dir the bot's LoRA folder setting is where names are looked up.
    monkeypatch.setenv("STORAGE_LORA_DIR", str(tmp_path / "lora"))
    args = [prompt, "--model", str(tiny_model_dir), "--steps", "1", "--width", "64"]
    args += ["--height", "64", "--seed", "1"]
    assert cli.main([*args, "--out", str(out), "--quiet"]) == 0
    with Image.open(next(out.glob("gen_*.png"))) as image:
        params = image.info["parameters"]
    assert params.startswith(prompt + "\n") and 'LoRAs: "ink:0.7"' in params
