"""Issue 15 figures: switching a LoRA stack vs one adapter, and weighted vs plain prompt encoding.

python -m bench.prompt_power [--model models/demo] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_lora(pipe, folder: Path, seed: int, rank: int = 4) -> Path:
    """A random LoRA for this UNet, saved in the diffusers layout."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # fmt: skip
    pipe.unet.add_adapter(config, adapter_name=f"tmp{seed}")
    state = get_peft_model_state_dict(pipe.unet, adapter_name=f"tmp{seed}")
    pipe.unet.delete_adapters(f"tmp{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state)
    return folder / "pytorch_lora_weights.safetensors"


def median_ms(fn, rounds: int) -> float:
    """Median wall time of fn() in milliseconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    """Print the figures as Markdown table rows."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/demo")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator
    from engine.prompt_syntax import parse_weights
    from engine.prompts import encode_long_prompt, encode_weighted_prompt

    gen = TextToImageGenerator(AppConfig(model=ModelConfig(model_id=args.model, device="cpu")))
    gen.load_model()
    manager = gen.lora
    with tempfile.TemporaryDirectory() as tmp:
        names = [
            manager.load(make_lora(gen.pipe, Path(tmp) / f"l{i}", i), f"l{i}") for i in range(4)
        ]
        stacks = {
            1: ([(names[0], 1.0)], [(names[1], 1.0)]),
            2: ([(names[0], 0.7), (names[1], 0.4)], [(names[2], 0.7), (names[3], 0.4)]),
            3: ([(n, 0.5) for n in names[:3]], [(n, 0.5) for n in names[1:]]),
        }
        for size, (first, second) in stacks.items():
            flip = [first, second]

            def switch(flip=flip) -> None:
                flip.reverse()
                manager.activate_many(flip[0])

            print(f"| switch a stack of {size} | {median_ms(switch, args.rounds):.1f} ms |")
    device = torch.device("cpu")
    text = "a castle at dusk, dramatic lighting, a red flag, a green garden, " * 4
    weighted = "a castle at dusk, (dramatic lighting:1.3), [a red flag], ((a green garden)), " * 4
    plain_ms = median_ms(
        lambda: encode_long_prompt(gen.pipe, text, "blurry", device, True), args.rounds
    )
    pos, neg = parse_weights(weighted), parse_weights("blurry")
    weighted_ms = median_ms(
        lambda: encode_weighted_prompt(gen.pipe, pos, neg, device, True), args.rounds
    )
    print(f"| encode a 2-window prompt, plain | {plain_ms:.1f} ms |")
    print(
        f"| encode it weighted (compel; 4 (x:1.3), 4 [x] down-weights, 4 ((x))) | {weighted_ms:.1f} ms |"
    )


if __name__ == "__main__":
    main()
