"""The demo pipeline's parts: the untrained models, assembling and finishing the pipeline."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from engine.demo.shapes import vocabulary
from engine.demo.tokenizer import write_tokenizer

IMAGE_SIZE = 64
LATENT_SIZE = 16  # a factor-4 VAE (3 blocks)


def build_models(args: argparse.Namespace, vocab_size: int):
    """Build the untrained VAE, text encoder and UNet from the command-line sizes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=args.text_width,
            intermediate_size=args.text_width * 2,
            num_hidden_layers=args.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=args.layers_per_block,
        cross_attention_dim=args.text_width,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    return vae, text_encoder, unet


def count(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def make_pipeline(vae, text_encoder, unet, tokenizer, prediction_type: str):
    """Assemble a StableDiffusionPipeline with the DPM++ 2M Karras scheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        use_karras_sigmas=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        unet=unet,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def finalize(out: Path) -> None:
    """Store the UNet weights as fp16 (they load as fp32) and add vocab.json and merges.txt."""
    from safetensors.torch import load_file, save_file

    path = out / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    save_file(
        {k: v.half().contiguous() for k, v in weights.items()}, path, metadata={"format": "pt"}
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), vocabulary())
        for name in ("vocab.json", "merges.txt"):
            (out / "tokenizer" / name).write_bytes((Path(tmp) / name).read_bytes())


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Exponential moving average of parameters."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
