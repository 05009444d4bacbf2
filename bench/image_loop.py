"""img2img and upscale on the full-size SD v1.5 architecture (CPU), side by side in one process.

1. img2img at strength s and n steps against txt2img at n steps, same size, seed and sampler:
   the time ratio, and s for comparison (diffusers runs about s·n denoising steps).
2. Upscale ×2 from 256 to 512 px at strength 0.35, untiled (what the engine does on a CPU) and
   in seamless VAE tiles of 256 px (what it does when GPU memory is short): time and the
   process's peak RSS during each run (psutil, 5 ms sampling).

``python -m bench.image_loop`` (several minutes of one core); ``--dry-run`` uses the tiny model.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from bench import WORK, load_average, set_threads

PROMPT = "a photo of a red castle on a hill at dusk"
SEED = 11


class PeakRss:
    """The highest RSS of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRss:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn: Any) -> tuple[float, float, Any]:
    """(seconds, peak RSS in MB, result) of fn()."""
    with PeakRss() as rss:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    return seconds, rss.peak / 1e6, result


def run(model: Path, size: int, steps: int, strength: float, pairs: int) -> dict[str, Any]:
    """Both measurements on one loaded generator; returns the figures."""
    from bench.models import app_config
    from engine.generator import TextToImageGenerator

    gen = TextToImageGenerator(app_config(model, width=size, height=size, negative_prompt=""))
    gen.load_model()
    common = {"prompt": PROMPT, "seed": SEED, "num_inference_steps": steps}
    source = gen.generate(**common, width=size, height=size)[0]  # also the warm-up
    gen.generate(**common, width=size, height=size, init_image=source, strength=strength)
    ratios, txt_times, img_times = [], [], []
    for _ in range(pairs):
        t_txt, _, _ = timed(lambda: gen.generate(**common, width=size, height=size))
        t_img, _, _ = timed(
            lambda: gen.generate(
                **common, width=size, height=size, init_image=source, strength=strength
            )
        )
        txt_times.append(t_txt)
        img_times.append(t_img)
        ratios.append(t_img / t_txt)
    upscale: dict[str, Any] = {}
    import engine.vae_tiles as vae_tiles

    decide = vae_tiles.tile_size
    for tiling in (False, True):
        # A CPU never needs tiles; the bench forces them for the comparison.
        vae_tiles.tile_size = (lambda *a, **k: 256) if tiling else decide
        try:
            seconds, peak, image = timed(
                lambda: gen.upscale(source, factor=2.0, strength=0.35, num_inference_steps=steps)
            )
        finally:
            vae_tiles.tile_size = decide
        upscale["tiling" if tiling else "no tiling"] = {
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak),
            "size": list(image.size),
        }
    return {
        "size": size,
        "steps": steps,
        "strength": strength,
        "txt2img_s": [round(t, 2) for t in txt_times],
        "img2img_s": [round(t, 2) for t in img_times],
        "ratio_median": round(sorted(ratios)[len(ratios) // 2], 3),
        "upscale_x2": upscale,
        "load": load_average(),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 64 px")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    set_threads()
    if args.dry_run:
        from bench.models import tiny_model_dir

        figures = run(tiny_model_dir(), 64, 4, 0.5, 1)
    else:
        from bench.models import ensure_sd15

        figures = run(ensure_sd15(), 256, 10, 0.5, args.pairs)
    print(json.dumps(figures))
    (WORK / "image_loop.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
