"""LoRA trainer on the full-size architecture at 256 px on the CPU: s/step and peak RSS."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import THREADS, WORK, load_average, record

MB = 1024 * 1024
VARIANTS: dict[str, dict[str, bool]] = {
    "ckpt off, cache on": {"gradient_checkpointing": False, "cache_latents": True},
    "ckpt on, cache on": {"gradient_checkpointing": True, "cache_latents": True},
    "ckpt off, cache off": {"gradient_checkpointing": False, "cache_latents": False},
}


def make_dataset(folder: Path, count: int = 4, size: int = 256) -> Path:
    """A few images of a red disc on white (the tests' training set, larger)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.new("RGB", (size, size), (255, 255, 255))
        r = size // 4
        x = size // 8 + i * size // 16
        ImageDraw.Draw(img).ellipse((x, r, x + 2 * r, 3 * r), fill=(200, 30, 30))
        img.save(folder / f"{i:04d}.png")
    return folder


def child(variant: str, model_dir: str, size: int, steps: int) -> dict[str, Any]:
    """setup() + 1 warm-up step + `steps` timed steps of one variant; RSS figures in MB."""
    import psutil
    import torch

    from bench.memory import RssSampler
    from engine.training.config import TrainConfig
    from engine.training.trainer import LoraTrainer

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        data = make_dataset(Path(tmp) / "data", size=size)
        config = TrainConfig(
            dataset_dir=data,
            output_dir=Path(tmp) / "out",
            model=model_dir,
            resolution=size,
            max_steps=steps + 1,
            checkpoint_every=0,
            sample_steps=0,
            device="cpu",
            **VARIANTS[variant],
        )
        trainer = LoraTrainer(config)
        started = time.perf_counter()
        trainer.setup()
        setup_s = time.perf_counter() - started
        after_setup = psutil.Process().memory_info().rss
        trainer.train_steps(1)
        started = time.perf_counter()
        with RssSampler() as sampler:
            trainer.train_steps(steps)
        per_step = (time.perf_counter() - started) / steps
        trainer.abort()
    return {
        "variant": variant,
        "options": trainer.options,
        "setup_s": setup_s,
        "seconds_per_step": per_step,
        "after_setup_mb": after_setup / MB,
        "training_peak_mb": sampler.peak / MB,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def training(
    model_dir: Path | None = None,
    size: int = 256,
    steps: int = 2,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    """Run each trainer variant in a fresh subprocess and record s/step and peak RSS."""
    from bench.models import ensure_sd15

    folder = model_dir or ensure_sd15()
    rows: dict[str, Any] = {}
    for name in variants or list(VARIANTS):
        cmd = [sys.executable, "-m", "bench.training", "--child", name, "--model", str(folder)]
        cmd += ["--size", str(size), "--steps", str(steps)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"training child {name!r} failed:\n{out.stderr[-2000:]}")
        rows[name] = r = json.loads(lines[-1])
        print(
            f"  {name:<20} {r['seconds_per_step']:.2f} s/step, peak {r['ru_maxrss_mb']:.0f} MB "
            f"(training {r['training_peak_mb']:.0f} MB, setup {r['setup_s']:.0f}s)",
            flush=True,
        )
    data = {"size": size, "steps": steps, "rows": rows, "load": load_average()}
    record("training", data)
    return data


def main() -> None:
    """Child-process entry point (or a stand-alone run)."""
    from bench.memory import child_main

    child_main(child, training)


if __name__ == "__main__":
    main()
