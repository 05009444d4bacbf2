"""Peak RSS of one CPU generation under each optimization setting, each in a fresh subprocess."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import load_average, record, set_threads

SETTINGS: dict[str, dict[str, bool]] = {
    "baseline": {},
    "attention slicing": {"enable_attention_slicing": True},
    "VAE slicing": {"enable_vae_slicing": True},
    "VAE tiling": {"enable_vae_tiling": True},
    "channels-last": {"channels_last": True},
}
MB = 1024 * 1024


class RssSampler:
    """Samples this process's RSS every few ms on a thread and keeps the peak."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def child(setting: str, model_dir: str, size: int, steps: int) -> dict[str, Any]:
    """Load the model with one setting, generate once, and report RSS figures (MB)."""
    import psutil

    from bench.models import app_config
    from engine.config import OptimizationConfig
    from engine.generator import TextToImageGenerator

    set_threads()
    config = app_config(Path(model_dir), width=size, height=size, num_inference_steps=steps)
    config.optimization = OptimizationConfig(vram_preset="none", **SETTINGS[setting])
    gen = TextToImageGenerator(config)
    gen.load_model()
    after_load = psutil.Process().memory_info().rss
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    with RssSampler() as sampler:
        gen.generate("a photo of the red castle at dusk", seed=1)
    seconds = time.perf_counter() - started
    return {
        "setting": setting,
        "applied": gen.slot.applied,
        "after_load_mb": after_load / MB,
        "load_peak_mb": load_peak / MB,
        "generation_peak_mb": sampler.peak / MB,
        "generation_added_mb": (sampler.peak - after_load) / MB,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
    }


def run_one(setting: str, model_dir: Path, size: int, steps: int) -> dict[str, Any]:
    """Run child() for one setting in a fresh Python process and return its JSON."""
    cmd = [
        sys.executable,
        "-m",
        "bench.memory",
        "--child",
        setting,
        "--model",
        str(model_dir),
        "--size",
        str(size),
        "--steps",
        str(steps),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory child {setting!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def peak_memory(
    model_dir: Path | None = None,
    size: int = 256,
    steps: int = 2,
    settings: list[str] | None = None,
) -> dict[str, Any]:
    """Peak RSS per setting (fresh subprocess each), with ratios to the baseline."""
    from bench.models import ensure_sd15

    folder = model_dir or ensure_sd15()
    rows: dict[str, Any] = {}
    for name in settings or list(SETTINGS):
        rows[name] = run_one(name, folder, size, steps)
        r = rows[name]
        print(
            f"  {name:<18} peak {r['ru_maxrss_mb']:8.0f} MB, generation peak "
            f"{r['generation_peak_mb']:8.0f} MB (+{r['generation_added_mb']:.0f} MB), "
            f"{r['seconds']:.1f}s",
            flush=True,
        )
    base = rows.get("baseline")
    if base:
        for r in rows.values():
            r["ratio_peak"] = r["generation_peak_mb"] / base["generation_peak_mb"]
            added = base["generation_added_mb"]
            r["ratio_added"] = r["generation_added_mb"] / added if added > 0 else None
    data = {
        "size": size,
        "steps": steps,
        "model": str(folder),
        "rows": rows,
        "load": load_average(),
    }
    record("peak_memory", data)
    return data


def child_main(child_fn, whole_fn) -> None:  # type: ignore[no-untyped-def]
    """Shared command line of the benchmark child processes: --child NAME, or run every setting."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_fn(args.child, args.model, args.size, args.steps)), flush=True)
    else:
        model = Path(args.model) if args.model else None
        print(json.dumps(whole_fn(model, args.size, args.steps), indent=2))


def main() -> None:
    """Entry point of the child process (or a stand-alone run of every setting)."""
    child_main(child, peak_memory)


if __name__ == "__main__":
    main()
