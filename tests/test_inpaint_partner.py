"""A 9-channel inpainting model in MODEL_CHOICES: detected without loading, used for region jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.metadata import parse_parameters
from engine.model_choices import ModelCatalog
from engine.requests import GenerationRequest
from tests.conftest import tiny_config
from tests.tiny_sd import save_tiny_inpainting_pipeline, save_tiny_pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain and an inpainting tiny model of one family, and an inpainting one of another."""
    root = tmp_path_factory.mktemp("partner_models")
    return {
        "plain": save_tiny_pipeline(root / "plain", seed=0),
        "fill": save_tiny_inpainting_pipeline(root / "fill", seed=3),
        "widefill": save_tiny_inpainting_pipeline(root / "widefill", cross_attention_dim=48),
        "wide": save_tiny_pipeline(root / "wide", cross_attention_dim=48),
    }


def _single_file(path: Path, conv_in: str, channels: int, width: int) -> Path:
    """A header-only stand-in for a single-file checkpoint: the two tensors the catalog reads."""
    save_file(
        {
            conv_in: torch.zeros(8, channels, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (
                torch.zeros(4, width)
            ),
        },
        str(path),
    )
    return path


def test_unet_inputs_are_read_from_configs_and_checkpoint_headers(
    models: dict[str, Path], tmp_path: Path
) -> None:
    ldm = _single_file(tmp_path / "ldm.safetensors", "model.diffusion_model.input_blocks.0.0.weight",
                       9, 768)  # fmt: skip
    flat = _single_file(tmp_path / "flat.safetensors", "unet.conv_in.weight", 4, 768)
    bare = tmp_path / "bare.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(bare))
    catalog = ModelCatalog(
        str(models["plain"]),
        f"fill={models['fill']},ldm={ldm},flat={flat},bare={bare},"
        "hub=runwayml/stable-diffusion-inpainting,sd15=runwayml/stable-diffusion-v1-5,"
        "other=someone/not-cached",
    )
    found = {name: catalog.unet_channels(name) for name in catalog.names()}
    assert found == {
        "plain": 4, "fill": 9, "ldm": 9, "flat": 4, "bare": None, "hub": 9, "sd15": 4,
        "other": None,
    }  # fmt: skip
    assert catalog.width("ldm") == 768 and catalog.width("hub") == 768


def test_the_partner_is_an_inpainting_model_of_the_same_family(
    models: dict[str, Path], tmp_path: Path
) -> None:
    # The wide inpainting model is listed first: it must not be picked for the narrow family.
    catalog = ModelCatalog(
        str(models["plain"]),
        f"widefill={models['widefill']},wide={models['wide']},fill={models['fill']}",
    )
    assert catalog.inpaint_partner("plain") == "fill"
    assert catalog.inpaint_partner(None) == "fill"  # the default model
    assert catalog.inpaint_partner("wide") == "widefill"
    # An inpainting model has no partner; unknown names and unreadable models get no guess.
    assert catalog.inpaint_partner("fill") is None and catalog.inpaint_partner("nope") is None
    alone = ModelCatalog(str(models["plain"]), f"widefill={models['widefill']}")
    assert alone.inpaint_partner("plain") is None
    unread = ModelCatalog("someone/not-cached", f"fill={models['fill']}")
    assert unread.inpaint_partner(None) is None


def test_region_jobs_run_on_the_partner_and_text_to_image_stays(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from engine.generator import TextToImageGenerator

    config = tiny_config(models["plain"])
    config.model = config.model.model_copy(update={"choices": f"fill={models['fill']}"})
    gen = TextToImageGenerator(config)
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    region = GenerationRequest("a cat", init_image=str(source), mask_region="4", seed=1)
    assert gen.prepare(region).model == "fill"
    assert gen.prepare(GenerationRequest("a cat", init_image=str(source))).model is None
    assert gen.prepare(GenerationRequest("a cat", model="plain", mask_region="4",
                                         init_image=str(source))).model == "plain"  # fmt: skip
    gen.load_model()
    try:
        (plain,) = gen.generate("a cat", seed=1)
        assert gen.model_name == "plain"
        assert parse_parameters(plain.info["parameters"])["Model"] == "plain"
        painted = gen.inpaint(source, {4}, prompt="a cat", seed=1, mask_blur=0)
        assert gen.model_name == "fill" and gen.last_result.request.model == "fill"
        assert parse_parameters(painted.info["parameters"])["Model"] == "fill"
        assert (gen.last_result.request.mask_region, painted.size) == ("4", (64, 64))
        # Named, the plain model is honoured (and switched back to).
        named = gen.inpaint(source, {4}, prompt="a cat", seed=1, mask_blur=0, model="plain")
        assert gen.model_name == "plain"
        assert parse_parameters(named.info["parameters"])["Model"] == "plain"
    finally:
        gen.unload()


def test_cli_region_job_takes_the_partner_unless_a_model_is_named(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from tests.test_engine_cli import run_cli

    (tmp_path / ".env").write_text(
        f"MODEL_ID={models['plain']}\nMODEL_CHOICES=fill={models['fill']}\n"
    )
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    common = ["--region", "4", "--prompt", "a cat", "--steps", "2", "--quiet"]
    for named, expected in (([], "fill"), (["--model", "plain"], "plain")):
        out = tmp_path / expected
        proc = run_cli("inpaint", str(source), *common, *named, "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        (made,) = out.glob("inpaint_*.png")
        with Image.open(made) as image:
            assert parse_parameters(image.info["parameters"])["Model"] == expected
