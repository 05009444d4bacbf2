"""The documented set-up: `cp .env.example .env` plus `MODEL_ID=demo` draws what the demo draws.

Timings cannot be asserted on a shared machine, so "as fast as without the file" is pinned by
the work itself: the copied file must resolve to the very same request (size, steps, CFG,
negative prompt, sampler) as no file at all, and that request is the demo model's own defaults.
Same resolved request, same denoising work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from botcore.settings import load_settings
from engine.metadata import parse_parameters
from engine.pipeline import read_model_defaults, resolve_model_source
from engine.requests import GenerationRequest, ResolvedRequest, resolve_request

ROOT = Path(__file__).resolve().parent.parent
DEMO_DEFAULTS = json.loads((ROOT / "models" / "demo" / "engine_defaults.json").read_text())


def copied_env(folder: Path, *extra: str) -> Path:
    """A .env made as the README says: the example copied, then MODEL_ID set."""
    env = folder / ".env"
    env.write_text((ROOT / ".env.example").read_text() + "".join(f"{line}\n" for line in extra))
    return env


def resolved(env_file: Path | None) -> ResolvedRequest:
    settings = load_settings(env_file)
    source = resolve_model_source(settings.config.model.model_id)
    request = GenerationRequest(prompt="a red circle on a blue background", seed=7)
    return resolve_request(request, settings.config.generation, read_model_defaults(source))


def test_the_copied_example_asks_for_the_demo_models_own_request(tmp_path: Path) -> None:
    request = resolved(copied_env(tmp_path, "MODEL_ID=demo"))
    assert (request.width, request.height) == (DEMO_DEFAULTS["width"], DEMO_DEFAULTS["height"])
    assert request.num_inference_steps == DEMO_DEFAULTS["num_inference_steps"] == 20
    assert request.guidance_scale == DEMO_DEFAULTS["guidance_scale"] == 5.0
    assert request.negative_prompt == DEMO_DEFAULTS["negative_prompt"] == ""
    assert request.scheduler == DEMO_DEFAULTS["scheduler"]
    assert (request.width, request.height) == (64, 64)


def test_the_copied_example_does_the_same_work_as_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_file = resolved(copied_env(tmp_path, "MODEL_ID=demo"))
    monkeypatch.setenv("MODEL_ID", "demo")
    assert with_file == resolved(None)


def test_a_setting_given_on_purpose_wins_over_the_models_own(tmp_path: Path) -> None:
    env = copied_env(tmp_path, "MODEL_ID=demo", "GEN_WIDTH=128", "GEN_NUM_INFERENCE_STEPS=4")
    request = resolved(env)
    assert request.width == 128 and request.num_inference_steps == 4
    # What the owner did not set still comes from the model.
    assert request.height == 64 and request.guidance_scale == 5.0 and request.negative_prompt == ""


def test_cli_with_the_copied_example_draws_at_the_demos_size(tmp_path: Path) -> None:
    copied_env(tmp_path, "MODEL_ID=demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "GEN_", "OPT_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "a red circle on a blue background", "--seed", "3"],
        cwd=tmp_path,  # the .env is read from the folder the command runs in
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (png,) = (tmp_path / "outputs").rglob("*.png")
    with Image.open(png) as image:
        assert image.size == (64, 64)
        params = parse_parameters(image.info["parameters"])
    assert params["Steps"] == "20" and params["CFG scale"] == "5"
    assert params["negative_prompt"] == ""
