"""fp32 against bf16 on this CPU (issue 21 item 6), side by side in one process.

    python -m bench.cpu_precision [--pairs 3] [--full-pairs 2] [--threads 2]

Demo model: the engine end to end (`generate`, 64 px, 20 steps), one generator per precision.
Full-size SD v1.5 architecture (random weights, bench/models.py, built in memory): one UNet call
(batch 2 as with CFG, 32x32 latents = 256 px) and one VAE decode of a 32x32 latent. Where the
CPU only emulates bf16 one full-size bf16 UNet call takes minutes (268 s on an AVX2 EPYC core).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from bench import alternate, load_average, quiet, record, set_threads

PROMPT = "a large red circle in the center on a white background"


def demo_pair(pairs: int) -> dict[str, Any]:
    """The engine on models/demo in fp32 and bf16: seconds per image, ratio bf16/fp32."""
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator

    gens = {}
    for precision in ("fp32", "bf16"):
        gen = TextToImageGenerator(
            AppConfig(model=ModelConfig(model_id="demo", device="cpu", precision=precision))
        )
        gen.load_model()
        gen.generate(PROMPT, seed=0)  # warm-up
        gens[precision] = gen

    def run(precision: str) -> Any:
        return lambda: gens[precision].generate(PROMPT, seed=1)

    return alternate(run("fp32"), run("bf16"), pairs, label="demo 64px/20 steps fp32 vs bf16")


def full_pairs(pairs: int) -> dict[str, Any]:
    """Full-size UNet call and VAE decode in fp32 and bf16."""
    import torch

    from bench.models import build_components

    parts = build_components()
    unet32, vae32 = parts["unet"], parts["vae"]
    unet16 = copy.deepcopy(unet32).to(torch.bfloat16)
    vae16 = copy.deepcopy(vae32).to(torch.bfloat16)
    latents = torch.randn(2, 4, 32, 32)
    text = torch.randn(2, 77, 768)
    t = torch.tensor(500)

    def unet(model: Any, dtype: torch.dtype) -> Any:
        def call() -> None:
            with torch.no_grad():
                model(latents.to(dtype), t, text.to(dtype))

        return call

    def vae(model: Any, dtype: torch.dtype) -> Any:
        def call() -> None:
            with torch.no_grad():
                model.decode(latents[:1].to(dtype))

        return call

    out = {}
    for name, a, b in (
        ("unet", unet(unet32, torch.float32), unet(unet16, torch.bfloat16)),
        ("vae_decode", vae(vae32, torch.float32), vae(vae16, torch.bfloat16)),
    ):
        a(), b()  # warm-up
        out[name] = alternate(a, b, pairs, label=f"full-size {name} fp32 vs bf16")
    return out


def main() -> None:
    """Run both comparisons; print and record them."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_precision")
    parser.add_argument("--pairs", type=int, default=3, help="demo pairs")
    parser.add_argument("--full-pairs", type=int, default=1, help="full-size pairs (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet()
    set_threads(args.threads)
    from engine.cpu import detect_cpu

    cpu = detect_cpu()
    facts = {
        "cpu": cpu.name,
        "capability": cpu.capability,
        "native_bf16": cpu.native_bf16,
        "flags": sorted(cpu.flags),
        "threads": args.threads,
        "load_before": load_average(),
    }
    print(facts)
    result: dict[str, Any] = {**facts, "demo": demo_pair(args.pairs)}
    if args.full_pairs:
        result["full"] = full_pairs(args.full_pairs)
    result["load_after"] = load_average()
    record("cpu_precision", result)
    for name, data in [("demo", result["demo"]), *result.get("full", {}).items()]:
        print(
            f"{name}: fp32 {data['median_a_s']:.2f}s, bf16 {data['median_b_s']:.2f}s, "
            f"bf16/fp32 median ratio {data['median_ratio']:.2f} ({data['pairs']} pairs)"
        )
    print("load", result["load_before"], "->", result["load_after"], Path.cwd())


if __name__ == "__main__":
    main()
