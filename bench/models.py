"""Full-size SD v1.5 components from their published configs, seeded random weights, no download."""

from __future__ import annotations

import itertools
import json
import logging
import string
import time
from pathlib import Path
from typing import Any

import torch

from bench import WORK

log = logging.getLogger(__name__)

SD15_DIR = WORK / "sd15-random"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

# The published SD v1.5 component configs (unet/config.json, vae/config.json, ...).
UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": MAX_LENGTH,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": VOCAB_SIZE,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
PROMPT_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "red",
    "castle",
    "at",
    "dusk",
    "with",
    "a",
    "garden",
    "painting",
    "in",
    "style",
    "portrait",
    "landscape",
    "mountain",
    "river",
    "sky",
    "blue",
    "green",
    "house",
    "city",
    "night",
    "forest",
    "sea",
    "boat",
    "dog",
    "cat",
    "detailed",
    "beautiful",
    "quality",
    "low",
    "worst",
    "blurry",
    "bad",
    "sks",
]


def generated_words() -> list[str]:
    """Prompt words first, then every 3-, 4- and 5-letter word in order (enough to fill 49,408)."""
    letters = string.ascii_lowercase
    seen = set(PROMPT_WORDS)
    words = list(dict.fromkeys(PROMPT_WORDS))
    for length in (3, 4, 5):
        for combo in itertools.product(letters, repeat=length):
            word = "".join(combo)
            if word not in seen:
                words.append(word)
                if len(words) >= VOCAB_SIZE:
                    return words
    return words


def write_full_tokenizer(folder: Path) -> int:
    """Write a 49,408-entry CLIP BPE vocabulary whose merges rebuild each generated word."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    limit = VOCAB_SIZE - 2  # the two special tokens take the last ids, as in SD's tokenizer
    for ch in string.ascii_lowercase + string.digits + ",.!?":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[str] = []
    seen: set[str] = set()
    for word in generated_words():
        pieces = [*word[:-1], word[-1] + "</w>"]
        new_tokens = []
        current = pieces[0]
        word_merges = []
        for nxt in pieces[1:]:
            merge = f"{current} {nxt}"
            current = current + nxt
            if merge not in seen:
                word_merges.append(merge)
            if current not in vocab:
                new_tokens.append(current)
        if len(vocab) + len(new_tokens) > limit:
            break
        for token in new_tokens:
            vocab[token] = len(vocab)
        for merge in word_merges:
            seen.add(merge)
            merges.append(merge)
    filler = 0
    while len(vocab) < limit:  # unreachable filler tokens make the size exact
        vocab.setdefault(f"<|unused{filler}|>", len(vocab))
        filler += 1
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": MAX_LENGTH,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "do_lower_case": True,
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return len(vocab)


def build_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Build the SD v1.5 UNet, VAE, CLIP ViT-L/14 text encoder, tokenizer and scheduler."""
    import tempfile

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    if dtype != torch.float32:
        unet, vae, text_encoder = (m.to(dtype) for m in (unet, vae, text_encoder))
    with tempfile.TemporaryDirectory() as tmp:
        write_full_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def build_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A StableDiffusionPipeline of full-size random-weight SD v1.5 components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **build_components(seed, dtype),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def param_counts(pipe: Any) -> dict[str, float]:
    """Millions of parameters of the UNet, text encoder and VAE."""
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6
        for name in ("unet", "text_encoder", "vae")
    }


def ensure_sd15(folder: Path = SD15_DIR) -> Path:
    """Build and save the full-size random SD v1.5 once (fp32 safetensors); reuse it afterwards."""
    if (folder / "model_index.json").is_file() and (folder / "unet").is_dir():
        return folder
    started = time.perf_counter()
    print(f"building full-size SD v1.5 (random weights) into {folder} ...", flush=True)
    pipe = build_pipeline()
    counts = param_counts(pipe)
    tmp = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "bench_params.json").write_text(json.dumps(counts))
    tmp.rename(folder)
    sizes = ", ".join(f"{k} {v:.1f}M" for k, v in counts.items())
    print(f"built in {time.perf_counter() - started:.0f}s: {sizes}", flush=True)
    return folder


def unet_lora_state(rank: int, seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """Random LoRA A/B matrices (peft key layout) for every attention projection of the SD UNet."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**UNET_CONFIG)
    gen = torch.Generator().manual_seed(1000 + seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(LORA_TARGETS):
            continue
        out_f, in_f = module.out_features, module.in_features
        state[f"{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * scale
        state[f"{name}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * scale
    return state


def make_full_lora(folder: Path, *, rank: int, seed: int = 0) -> Path:
    """Write a random LoRA for the full-size UNet (diffusers layout); reuse an existing file."""
    from diffusers import StableDiffusionPipeline

    path = folder / "pytorch_lora_weights.safetensors"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_lora_state(rank, seed), safe_serialization=True
    )
    return path


def full_loras() -> tuple[Path, Path]:
    """The rank-4 and rank-16 full-size LoRAs in bench/_work (made once)."""
    return (
        make_full_lora(WORK / "lora-r4", rank=4, seed=1),
        make_full_lora(WORK / "lora-r16", rank=16, seed=2),
    )


def tiny_model_dir() -> Path:
    """The tests' tiny pipeline saved once under bench/_work."""
    from tests.tiny_sd import save_tiny_pipeline

    folder = WORK / "tiny-sd"
    if not (folder / "model_index.json").is_file():
        save_tiny_pipeline(folder)
    return folder


def app_config(model_dir: Path, **generation: Any) -> Any:
    """An AppConfig on the CPU for a model folder (tests.conftest.tiny_config-like)."""
    from engine.config import (
        AppConfig,
        GenerationConfig,
        ModelConfig,
        OptimizationConfig,
        QueueConfig,
    )

    gen = {"width": 256, "height": 256, "num_inference_steps": 4, "negative_prompt": "blurry"}
    gen.update(generation)
    return AppConfig(
        model=ModelConfig(model_id=str(model_dir), device="cpu"),
        optimization=OptimizationConfig(),
        generation=GenerationConfig(**gen),
        queue=QueueConfig(),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    ensure_sd15()
    print(full_loras())
