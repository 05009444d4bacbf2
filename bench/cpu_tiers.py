"""Issue 21's CPU table: a draft and a default image at 512 px, wall time, as a user's bot runs them.

Full-size SD v1.5 architecture (seeded random weights, `bench/models.py`), the engine's own
defaults for everything a user does not set (GEN_* defaults: 25 steps, DPM++ 2M Karras, CFG 7.5,
the default negative prompt; OPT_STEP_CACHE=auto; torch threads = the physical cores unless
--threads), one process, one loaded generator, draft / default / draft. The draft side has the
random LCM-LoRA (published layout, fused while drafting) and a random tiny VAE (TAESD
architecture) as `GEN_DRAFT_LORA` and `OPT_TINY_VAE`. Only the timings mean anything.

``python -m bench.cpu_tiers`` (several minutes); ``--dry-run`` runs the tiny model at 64 px.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from bench import WORK, load_average, quiet, record
from bench.fast_path import PROMPT, SEED, make_lcm_lora, make_tiny_vae


def cpu_tiers(tiny: bool = False, step_cache: str = "auto", threads: int = 0) -> dict[str, Any]:
    """Time draft, default, draft through gen.run; print and record wall and CPU seconds."""
    from bench.memory import RssSampler
    from bench.models import ensure_sd15, tiny_model_dir
    from engine.config import AppConfig, GenerationConfig, ModelConfig, OptimizationConfig
    from engine.generator import TextToImageGenerator
    from engine.requests import GenerationRequest

    model_dir = tiny_model_dir() if tiny else ensure_sd15()
    lora, _params = make_lcm_lora(
        model_dir, WORK / ("lcm-lora-tiny" if tiny else "lcm-lora-sd15"), rank=4 if tiny else 64
    )
    taesd = make_tiny_vae(WORK / "taesd-random")
    size = 64 if tiny else 512
    config = AppConfig(
        model=ModelConfig(model_id=str(model_dir), device="cpu"),
        optimization=OptimizationConfig(
            tiny_vae=str(taesd), step_cache=step_cache, cpu_threads=threads
        ),
        generation=GenerationConfig(width=size, height=size, draft_lora=str(lora)),
    )
    gen = TextToImageGenerator(config)
    gen.load_model()
    import torch

    print(
        f"cpu_tiers: {'tiny' if tiny else 'full-size SD v1.5'}, {size} px, "
        f"{torch.get_num_threads()} torch threads, step cache {step_cache}; load {load_average()}",
        flush=True,
    )

    def run(draft: bool) -> dict[str, Any]:
        request = GenerationRequest(prompt=PROMPT, seed=SEED, draft=draft)
        started, cpu_started = time.perf_counter(), time.process_time()
        with RssSampler() as rss:
            result = gen.run(request)
        resolved = result.request
        row = {
            "side": "draft" if draft else "default",
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "peak_rss_mb": round(rss.peak / 2**20),
            "steps": resolved.num_inference_steps,
            "sampler": resolved.scheduler,
            "cfg": resolved.guidance_scale,
            "fused": gen.lora is not None and gen.lora.fused is not None,
            "load": load_average(),
        }
        print(f"  {json.dumps(row)}", flush=True)
        return row

    for draft in (True, False):  # warm-up at 64 px: loads and fuses the LoRA, touches the weights
        gen.run(GenerationRequest(prompt=PROMPT, seed=SEED, draft=draft, width=64, height=64))
    rows = [run(True), run(False), run(True)]
    result = {
        "model": "tiny" if tiny else "sd15-random",
        "size": size,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "step_cache": step_cache,
        "runs": rows,
    }
    record("cpu_tiers_tiny" if tiny else f"cpu_tiers_cache_{step_cache}", result)
    gen.unload()
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m bench.cpu_tiers [--dry-run] [--step-cache auto|0|N] [--threads N]."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_tiers", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 64 px: test the code")
    parser.add_argument("--step-cache", default="auto", help="OPT_STEP_CACHE for the default side")
    parser.add_argument("--threads", type=int, default=0, help="0: the engine's default")
    args = parser.parse_args(argv)
    quiet()
    cpu_tiers(tiny=args.dry_run, step_cache=args.step_cache, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
