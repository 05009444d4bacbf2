"""The cost of an inpaint and an outpaint against text-to-image (issue 22), on the CPU.

    python -m bench.inpaint_cost [--pairs 3] [--full] [--threads 1]

Each kind of run alternates with a text-to-image run of the same size in one process (one
loaded generator, same steps, sampler and seed); the figure is the median ratio of the pairs.
Inpaint repaints the centre at strength 1; zoom 2 keeps the size; pan right paints a window of
the picture's own size and returns a picture 1.5x wider (compared with both sizes).
With --full the full-size random SD v1.5 (bench/models.py, /work/tmp/bench-models/sd15-random
when already built) runs one pair of each at 256 px, 4 steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import alternate, load_average, quiet, record, set_threads

PROMPT = "a large red circle in the center on a blue background"


def cost(gen: Any, size: int, steps: int, pairs: int, label: str) -> dict[str, Any]:
    """Ratios inpaint/txt2img, zoom/txt2img and pan/txt2img at `size` px on a loaded generator."""
    common = {"seed": 1, "num_inference_steps": steps}
    (source,) = gen.generate(PROMPT, width=size, height=size, **common)  # warm-up too

    def txt2img(width: int = size) -> Any:
        return lambda: gen.generate(PROMPT, width=width, height=size, **common)

    runs = {
        "inpaint": lambda: gen.inpaint(source, "centre", prompt=PROMPT, **common),
        "zoom 2": lambda: gen.outpaint(source, zoom=2, prompt=PROMPT, **common),
        "pan right": lambda: gen.outpaint(source, pan="right", prompt=PROMPT, **common),
    }
    found: dict[str, Any] = {}
    for name, run in runs.items():
        found[name] = alternate(txt2img(), run, pairs, label=f"{label} txt2img vs {name}")
    wide = size + size // 2 // 8 * 8
    found["pan right vs wide txt2img"] = alternate(
        txt2img(wide), runs["pan right"], pairs, label=f"{label} {wide}px txt2img vs pan right"
    )
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.inpaint_cost")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="also the full-size SD v1.5 at 256 px")
    args = parser.parse_args(argv)
    quiet()
    set_threads(args.threads)
    from engine.config import AppConfig, ModelConfig
    from engine.generator import TextToImageGenerator

    print(f"load average at start: {load_average()}")
    gen = TextToImageGenerator(AppConfig(model=ModelConfig(model_id="demo", device="cpu")))
    gen.load_model()
    results = {"demo 64px 20 steps": cost(gen, 64, 20, args.pairs, "demo")}
    gen.unload()
    if args.full:
        from bench.models import app_config, ensure_sd15

        full = TextToImageGenerator(
            app_config(ensure_sd15(Path("/work/tmp/bench-models/sd15-random")))
        )
        full.load_model()
        results["sd15 256px 4 steps"] = cost(full, 256, 4, 1, "sd15")
        full.unload()
    print(f"load average at end: {load_average()}")
    for where, found in results.items():
        for name, data in found.items():
            print(f"{where}: {name}: {data['median_ratio']:.2f}x "
                  f"({data['median_b_s']:.2f}s vs {data['median_a_s']:.2f}s)")  # fmt: skip
    record("inpaint_cost", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
