"""Round-trip tests: diffusers pipeline -> original SD v1 single file -> from_single_file (offline)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file

from tests.ldm_convert import convert_unet, convert_vae, save_original_checkpoint
from tests.tiny_sd import build_tiny_pipeline, save_tiny_pipeline

COMPONENTS = ("unet", "vae", "text_encoder")


def _no_network(*args: object, **kwargs: object) -> None:
    """Refuse any socket connection (the load must be fully offline)."""
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="module")
def roundtrip(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StableDiffusionPipeline, StableDiffusionPipeline, Path]]:
    """Yield (original pipeline, pipeline loaded from the converted single file, single-file path)."""
    root = tmp_path_factory.mktemp("ldm")
    folder = save_tiny_pipeline(root / "diffusers", seed=0)
    # Only configs may come from the folder: drop its weights so they must come from the single file.
    for name in COMPONENTS:
        for weights in (folder / name).glob("*.safetensors"):
            weights.unlink()
    original = build_tiny_pipeline(seed=0)
    checkpoint = root / "tiny-sd15.safetensors"
    save_original_checkpoint(original, checkpoint)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        loaded = StableDiffusionPipeline.from_single_file(
            str(checkpoint),
            config=str(folder),
            local_files_only=True,
            safety_checker=None,
        )
    yield original, loaded, checkpoint


def test_checkpoint_has_original_layout(
    roundtrip: tuple[StableDiffusionPipeline, StableDiffusionPipeline, Path],
) -> None:
    """The file uses the CompVis key prefixes, 4-D VAE attention and is inferred as SD v1."""
    _, _, checkpoint = roundtrip
    state = load_file(str(checkpoint))
    prefixes = (
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.transformer.text_model.",
    )
    assert all(key.startswith(prefixes) for key in state)
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in state)
    assert infer_diffusers_model_type(state) == "v1"
    for part in ("encoder", "decoder"):
        for name in ("q", "k", "v", "proj_out"):
            assert state[f"first_stage_model.{part}.mid.attn_1.{name}.weight"].ndim == 4
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in state
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in state
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in state


def test_parameters_identical(
    roundtrip: tuple[StableDiffusionPipeline, StableDiffusionPipeline, Path],
) -> None:
    """Every unet/vae/text_encoder parameter and buffer survives the round trip bit-exactly."""
    original, loaded, _ = roundtrip
    for name in COMPONENTS:
        want = getattr(original, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        for key, tensor in want.items():
            assert got[key].device.type != "meta", f"{name}.{key} not loaded"
            assert got[key].dtype == tensor.dtype, f"{name}.{key}"
            assert torch.equal(got[key], tensor), f"{name}.{key}"


def test_generation_identical(
    roundtrip: tuple[StableDiffusionPipeline, StableDiffusionPipeline, Path],
) -> None:
    """A seeded 2-step 64x64 generation gives identical pixels from both pipelines."""
    original, loaded, _ = roundtrip
    assert type(loaded.scheduler) is type(original.scheduler)
    images = []
    for pipe in (original, loaded):
        pipe.set_progress_bar_config(disable=True)
        result = pipe(
            "a red castle at dusk",
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(1234),
            output_type="np",
        )
        images.append(np.asarray(result.images))
    assert images[0].shape == (1, 64, 64, 3)
    assert np.array_equal(images[0], images[1])


def test_clip_inverse_of_diffusers_converter(
    roundtrip: tuple[StableDiffusionPipeline, StableDiffusionPipeline, Path],
) -> None:
    """diffusers' own CLIP ldm->diffusers converter recovers the text encoder keys."""
    original, _, checkpoint = roundtrip
    back = convert_ldm_clip_checkpoint(load_file(str(checkpoint)))
    back = {k.removeprefix("text_model."): v for k, v in back.items()}
    want = original.text_encoder.state_dict()
    assert set(want) <= set(back)
    assert all(torch.equal(back[key], want[key]) for key in want)


def test_general_shapes_invert_diffusers_converters() -> None:
    """Deeper nets (3 blocks, 2 layers per block, attention-free first up block) convert exactly too."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
    )
    ldm = {**convert_unet(unet), **convert_vae(vae)}
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm  # UpBlock2D upsampler slot
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm  # CrossAttnUpBlock2D slot
    assert "model.diffusion_model.input_blocks.8.0.in_layers.0.weight" in ldm
    for model, back in (
        (unet, convert_ldm_unet_checkpoint(ldm, dict(unet.config))),
        (vae, convert_ldm_vae_checkpoint(ldm, dict(vae.config))),
    ):
        want = model.state_dict()
        assert set(back) == set(want), type(model).__name__
        for key, tensor in want.items():
            assert torch.equal(back[key], tensor), key
