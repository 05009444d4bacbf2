"""Tiny Stable Diffusion pipelines with seeded random weights, built from small configs."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.demo.tokenizer import write_tokenizer

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "with",
    "and",
    "photo",
    "painting",
    "picture",
    "drawing",
    "style",
    "castle",
    "dusk",
    "garden",
    "dog",
    "cat",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "orange",
    "purple",
    "pink",
    "brown",
    "gray",
    "circle",
    "square",
    "triangle",
    "star",
    "small",
    "large",
    "big",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "background",
    "sks",
    "zwx",
    "ohwx",
    "quality",
    "low",
    "worst",
    "blurry",
    "bad",
    "ugly",
    "beautiful",
    "detailed",
    "portrait",
    "landscape",
    "mountain",
    "river",
    "sky",
    "sun",
    "moon",
    "tree",
    "house",
    "city",
    "night",
    "day",
    "forest",
    "sea",
    "boat",
]


def build_tiny_pipeline(seed: int = 0, cross_attention_dim: int = 32):
    """Return a StableDiffusionPipeline of tiny random-weight components (seeded, fp32, CPU)."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            max_position_embeddings=77,
        )
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), WORDS)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(
    folder: Path, seed: int = 0, safe: bool = True, cross_attention_dim: int = 32
) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors, or pickle .bin)."""
    pipe = build_tiny_pipeline(seed, cross_attention_dim=cross_attention_dim)
    pipe.save_pretrained(folder, safe_serialization=safe)
    return folder


def build_tiny_inpainting_pipeline(seed: int = 0, cross_attention_dim: int = 32):
    """The tiny pipeline with a 9-channel inpainting UNet (latents, mask, masked picture)."""
    from diffusers import UNet2DConditionModel

    pipe = build_tiny_pipeline(seed, cross_attention_dim=cross_attention_dim)
    torch.manual_seed(seed + 3)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9}).eval()
    return pipe


def save_tiny_inpainting_pipeline(
    folder: Path, seed: int = 0, cross_attention_dim: int = 32
) -> Path:
    """Build a tiny 9-channel inpainting pipeline and save it as a diffusers folder."""
    build_tiny_inpainting_pipeline(seed, cross_attention_dim).save_pretrained(
        folder, safe_serialization=True
    )
    return folder


def make_tiny_lora(
    folder: Path,
    *,
    seed: int = 0,
    rank: int = 4,
    kohya: bool = False,
    cross_attention_dim: int = 32,
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
) -> Path:
    """Write a random-weight LoRA for the tiny UNet; diffusers layout, or kohya when asked."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    pipe = build_tiny_pipeline(0, cross_attention_dim=cross_attention_dim)
    torch.manual_seed(1000 + seed)
    pipe.unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=list(targets),
            init_lora_weights=False,
        )
    )
    state = get_peft_model_state_dict(pipe.unet)
    folder.mkdir(parents=True, exist_ok=True)
    if kohya:
        kohya_state = convert_state_dict_to_kohya({"unet." + k: v for k, v in state.items()})
        path = folder / "tiny_kohya.safetensors"
        save_file({k: v.contiguous() for k, v in kohya_state.items()}, str(path))
        return path
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=state, safe_serialization=True
    )
    return folder / "pytorch_lora_weights.safetensors"
