"""Step caching (DeepCache) for the default mode on the CPU (issue 21 item 7).

    python -m bench.step_cache [--quick] [--intervals 2 3] [--prompts 48] [--pairs 1]
                               [--model FOLDER] [--no-image]

Quality: the demo model (models/demo) through the engine with its defaults (64 px, 20 steps,
DPM++ 2M Karras, CFG 5), held-out prompts seeded as tests/test_demo_quality.py seeds them, judged
(colour, background, shape) with OPT_STEP_CACHE off and at each interval.
Speed: the full-size SD v1.5 architecture (random weights, bench/models.py; `--model` reuses a
saved copy), one process, one thread, CPU time (`time.process_time`) and wall time:
- one UNet call at 512 px (batch 2, as with CFG): a full pass against a cached step, alternately;
- the whole default image through `gen.run` (512 px, 20 steps, CFG 7.5) off and at each interval,
  in turn in one process (`--no-image` skips it: minutes per image on a CPU).
`--quick` runs all of it on the demo model at 64 px with 8 prompts (the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import time
import types
from pathlib import Path
from typing import Any

from bench import load_average, median, quiet, record, set_threads

PROMPT = "a photo of a red castle on a hill at dusk"
SEED = 7
DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"


def demo_generator() -> Any:
    """The engine on models/demo (CPU), loaded."""
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator

    gen = TextToImageGenerator(AppConfig(model=ModelConfig(model_id="demo", device="cpu")))
    gen.load_model()
    return gen


def judged(gen: Any, setting: str, prompts: int) -> dict[str, Any]:
    """The judge's scores of `prompts` held-out demo prompts with OPT_STEP_CACHE=`setting`."""
    from engine.demo.judge import Judge, score
    from engine.demo.shapes import caption, eval_specs
    from engine.requests import GenerationRequest

    gen.config.optimization.step_cache = setting
    specs = eval_specs(prompts, seed=2024, held_out=True)
    judge = Judge()
    started = time.process_time()
    verdicts = [
        judge(gen.run(GenerationRequest(prompt=caption(spec), seed=1000 + i)).images[0])
        for i, spec in enumerate(specs)
    ]
    cpu = time.process_time() - started
    return {"rates": score(verdicts, specs), "verdicts": verdicts, "cpu_seconds": cpu}


def quality(intervals: list[int], prompts: int) -> dict[str, Any]:
    """Judge the demo model off and at each interval; scores and verdicts that changed."""
    gen = demo_generator()
    base = judged(gen, "0", prompts)
    rows = {"off": base}
    for interval in intervals:
        rows[str(interval)] = judged(gen, str(interval), prompts)
    out: dict[str, Any] = {"prompts": prompts, "load": load_average()}
    for name, row in rows.items():
        same = sum(a == b for a, b in zip(base["verdicts"], row["verdicts"], strict=True))
        worst = max(abs(row["rates"][k] - base["rates"][k]) for k in base["rates"])
        out[name] = {
            **{k: round(v * 100, 1) for k, v in row["rates"].items()},
            "same_verdicts": same,
            "largest_change_points": round(worst * 100, 1),
            "cpu_seconds": round(row["cpu_seconds"], 1),
        }
        print(f"  quality {name}: {json.dumps(out[name])}", flush=True)
    gen.unload()
    return out


def unet_steps(model_dir: Path, size: int, rounds: int, interval: int = 2) -> dict[str, Any]:
    """CPU seconds of one full UNet pass and one cached step (batch 2), alternately."""
    import torch
    from DeepCache import DeepCacheSDHelper
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet").eval()
    scheduler = DPMSolverMultistepScheduler.from_pretrained(model_dir / "scheduler")
    scheduler.set_timesteps(20)
    pipe = types.SimpleNamespace(unet=unet, scheduler=scheduler)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, size // 8, size // 8, generator=gen)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)

    def call(index: int) -> float:
        started = time.process_time()
        with torch.no_grad():
            unet(latents, scheduler.timesteps[index], encoder_hidden_states=text)
        return time.process_time() - started

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    full, cached, plain = [], [], []
    for _ in range(rounds):
        helper.enable()
        full.append(call(0))  # step 0: a full pass that fills the cache
        cached.append(call(1))  # step 1: reuses it
        helper.disable()
        plain.append(call(0))
        print(f"  unet {size}px: full {full[-1]:.2f} cached {cached[-1]:.2f} plain {plain[-1]:.2f}")
    return {
        "size": size,
        "full_cpu_s": full,
        "cached_cpu_s": cached,
        "plain_cpu_s": plain,
        "cached_over_full": median([c / f for c, f in zip(cached, full, strict=True)]),
        "load": load_average(),
    }


def images(model_dir: Path, size: int, intervals: list[int], pairs: int) -> dict[str, Any]:
    """The default image through `gen.run`, off and at each interval, in turn; CPU and wall time."""
    from bench.models import app_config
    from engine.generator import TextToImageGenerator
    from engine.requests import GenerationRequest

    config = app_config(model_dir, width=size, height=size, num_inference_steps=20)
    config.generation.guidance_scale = 7.5
    gen = TextToImageGenerator(config)
    gen.load_model()
    settings = ["0", *[str(i) for i in intervals]]
    for setting in settings:  # warm-up at 64 px: touches the memory-mapped weights
        gen.config.optimization.step_cache = setting
        gen.run(GenerationRequest(prompt=PROMPT, seed=SEED, width=64, height=64))
    runs: list[dict[str, Any]] = []
    for i in range(pairs):
        for setting in settings if i % 2 == 0 else settings[::-1]:
            gen.config.optimization.step_cache = setting
            started, cpu = time.perf_counter(), time.process_time()
            result = gen.run(GenerationRequest(prompt=PROMPT, seed=SEED))
            row = {
                "setting": setting,
                "round": i,
                "seconds": round(time.perf_counter() - started, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2),
                "steps": result.request.num_inference_steps,
                "cfg": result.request.guidance_scale,
                "load": load_average(),
            }
            runs.append(row)
            print(f"  image {json.dumps(row)}", flush=True)
    out: dict[str, Any] = {"size": size, "runs": runs}
    for setting in settings[1:]:
        ratios = [
            off["cpu_seconds"] / on["cpu_seconds"]
            for off, on in zip(
                [r for r in runs if r["setting"] == "0"],
                [r for r in runs if r["setting"] == setting],
                strict=True,
            )
        ]
        out[f"speedup_cpu_{setting}"] = median(ratios)
    gen.unload()
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the measurements, print them and record them in bench/_work/results.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo model only, 64 px, 8 prompts")
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--prompts", type=int, default=48, help="held-out demo prompts")
    parser.add_argument("--pairs", type=int, default=1, help="rounds of whole default images")
    parser.add_argument("--rounds", type=int, default=3, help="UNet calls per side")
    parser.add_argument("--model", type=Path, default=None, help="saved sd15-random folder")
    parser.add_argument("--no-image", action="store_true", help="skip the whole 512 px images")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args(argv)
    quiet()
    set_threads()
    print(f"step cache: load {load_average()}", flush=True)
    out: dict[str, Any] = {"quick": args.quick}
    if not args.skip_quality:
        out["quality"] = quality(args.intervals, 8 if args.quick else args.prompts)
    if args.quick:
        model_dir, size = DEMO, 64
    else:
        from bench.models import ensure_sd15

        model_dir, size = args.model or ensure_sd15(), 512
    out["unet"] = unet_steps(model_dir, size, args.rounds)
    if not args.no_image:
        out["images"] = images(model_dir, size, args.intervals, args.pairs)
    record("step_cache", out)
    print(json.dumps({k: v for k, v in out.items() if k != "quality"}, indent=1, default=str))


if __name__ == "__main__":
    main()
