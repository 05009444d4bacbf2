"""The CPU fast path the README recommends (LCM-LoRA + tiny VAE) against the default generation.

Both sides run through the engine in one process on the same loaded pipeline: the default side is
20 steps of the default sampler at the default CFG, decoded by the full VAE; the fast side is a
draft, ``draft=True`` (LCM-LoRA fused into the UNet, LCM sampler, the engine's draft steps and
CFG: 4 and 1), decoded by the tiny VAE.
Nothing is downloaded: the LCM-LoRA has the real ``latent-consistency/lcm-lora-sdv1-5`` layout
(rank 64, alpha 8, kohya keys, fp16) with random weights, and the tiny VAE is diffusers'
``AutoencoderTiny`` (the TAESD architecture) with random weights. Only the timings mean anything.

``python -m bench --only fastpath`` (full size, 512 px: several minutes on a CPU);
``python -m bench --quick --only fastpath`` or ``python -m bench.fast_path --dry-run`` (tiny model).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

from bench import WORK, load_average, record, set_threads

# The LCM-LoRA training script's targets (every attention, feed-forward, resnet conv, sampler and
# time projection of the UNet); the published SD v1.5 file is rank 64, alpha 8, in fp16.
LCM_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
LCM_RANK = 64
LCM_ALPHA = 8.0
PROMPT = "a photo of a red castle on a hill at dusk"
SEED = 7


def lcm_lora_state(
    unet_config: dict[str, Any], rank: int = LCM_RANK, scale: float = 0.01
) -> dict[str, torch.Tensor]:
    """Random LoRA weights in the LCM-LoRA file's layout (kohya keys, lora_down/up, alpha)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    gen = torch.Generator().manual_seed(64)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not any(name == t or name.endswith("." + t) for t in LCM_TARGETS):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down = torch.randn(rank, module.in_features, generator=gen)
            up = torch.randn(module.out_features, rank, generator=gen)
        elif isinstance(module, torch.nn.Conv2d):
            k1, k2 = module.kernel_size
            down = torch.randn(rank, module.in_channels, k1, k2, generator=gen)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=gen)
        else:
            continue
        state[f"{key}.lora_down.weight"] = (down * scale).half()
        state[f"{key}.lora_up.weight"] = (up * scale).half()
        state[f"{key}.alpha"] = torch.tensor(LCM_ALPHA, dtype=torch.float16)
    return state


def make_lcm_lora(model_dir: Path, folder: Path, rank: int = LCM_RANK) -> tuple[Path, int]:
    """Write the random LCM-shaped LoRA for a model folder's UNet once; return (file, parameters)."""
    from safetensors.torch import load_file, save_file

    path = folder / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        config = json.loads((model_dir / "unet" / "config.json").read_text())
        save_file(lcm_lora_state(config, rank), str(path))
    params = sum(t.numel() for k, t in load_file(str(path)).items() if not k.endswith(".alpha"))
    return path, params


def make_tiny_vae(folder: Path, latent_channels: int = 4) -> Path:
    """Save an AutoencoderTiny (TAESD architecture) with seeded random weights once."""
    from diffusers import AutoencoderTiny

    if not (folder / "config.json").is_file():
        torch.manual_seed(3)
        AutoencoderTiny(latent_channels=latent_channels).save_pretrained(folder)
    return folder


def fast_path(tiny: bool = False) -> dict[str, Any]:
    """Time fast, default, fast again (one process, one pipeline); print and record the ratio."""
    from bench.memory import RssSampler
    from bench.models import app_config, ensure_sd15, tiny_model_dir
    from engine.generator import TextToImageGenerator
    from engine.requests import GenerationRequest

    model_dir = tiny_model_dir() if tiny else ensure_sd15()
    size, steps = (64, 20) if tiny else (512, 20)
    lora, lora_params = make_lcm_lora(
        model_dir, WORK / ("lcm-lora-tiny" if tiny else "lcm-lora-sd15"), rank=4 if tiny else 64
    )
    taesd = make_tiny_vae(WORK / "taesd-random")
    config = app_config(model_dir, width=size, height=size, num_inference_steps=steps)
    config = config.model_copy(
        update={
            "generation": config.generation.model_copy(update={"draft_lora": str(lora)}),
            "optimization": config.optimization.model_copy(update={"tiny_vae": str(taesd)}),
        }
    )
    gen = TextToImageGenerator(config)
    gen.load_model()
    full_vae = gen.pipe.vae
    print(
        f"fastpath: {'tiny' if tiny else 'full-size SD v1.5'}, {size} px; LCM-LoRA "
        f"{lora_params / 1e6:.1f} M parameters ({lora.stat().st_size / 1e6:.1f} MB); "
        f"load {load_average()}",
        flush=True,
    )

    def run(fast: bool) -> dict[str, Any]:
        # A draft is decoded by the tiny VAE (OPT_TINY_VAE), the default side by the full one.
        request = GenerationRequest(prompt=PROMPT, seed=SEED, draft=fast)
        started, cpu_started = time.perf_counter(), time.process_time()
        with RssSampler() as rss:
            result = gen.run(request)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        resolved = result.request
        row = {
            "side": "fast" if fast else "default",
            "seconds": seconds,
            # CPU time of the process: far less sensitive than wall time to other jobs on the cores.
            "cpu_seconds": cpu_seconds,
            "peak_rss_mb": rss.peak / 2**20,
            "steps": resolved.num_inference_steps,
            "sampler": resolved.scheduler,
            "cfg": resolved.guidance_scale,
            "vae": "AutoencoderTiny" if fast else type(full_vae).__name__,
            "fused": gen.lora is not None and gen.lora.fused is not None,
            "load": load_average(),
        }
        print(f"  {json.dumps(row)}", flush=True)
        return row

    # Warm-up at the smallest size: loads the LoRA, touches the memory-mapped weights.
    for fast in (True, False):
        gen.run(GenerationRequest(prompt=PROMPT, seed=SEED, draft=fast, width=64, height=64))
    rows = [run(True), run(False), run(True)]
    fast_s = sorted(r["seconds"] for r in rows if r["side"] == "fast")
    default_s = rows[1]["seconds"]
    fast_cpu = sorted(r["cpu_seconds"] for r in rows if r["side"] == "fast")
    result = {
        "model": "tiny" if tiny else "sd15-random",
        "size": size,
        "runs": rows,
        "ratio_vs_best_fast": default_s / fast_s[0],
        "ratio_vs_worst_fast": default_s / fast_s[-1],
        "cpu_ratio_vs_best_fast": rows[1]["cpu_seconds"] / fast_cpu[0],
        "cpu_ratio_vs_worst_fast": rows[1]["cpu_seconds"] / fast_cpu[-1],
        "lcm_lora_params_m": lora_params / 1e6,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(
        f"fastpath: default {default_s:.1f}s, fast {fast_s[0]:.1f}/{fast_s[-1]:.1f}s: "
        f"{result['ratio_vs_worst_fast']:.1f}-{result['ratio_vs_best_fast']:.1f}x faster "
        f"(goal >= 8x); CPU time {result['cpu_ratio_vs_worst_fast']:.1f}-"
        f"{result['cpu_ratio_vs_best_fast']:.1f}x",
        flush=True,
    )
    record("fastpath_tiny" if tiny else "fastpath", result)
    gen.unload()
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m bench.fast_path [--dry-run]."""
    parser = argparse.ArgumentParser(prog="python -m bench.fast_path", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 64 px: test the code")
    args = parser.parse_args(argv)
    from bench import quiet

    quiet()
    set_threads()
    fast_path(tiny=args.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
