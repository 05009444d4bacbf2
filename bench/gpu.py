"""GPU benchmark: peak VRAM, seconds per image and estimator error per VRAM preset and offload mode.

On a CUDA machine: ``python -m bench.gpu`` (builds the full-size random SD v1.5 in fp16 once into
bench/_work/sd15-random-fp16, then 512x512, 20 steps per row; a few minutes on a data-centre GPU).
On the CPU: ``python -m bench.gpu --dry-run`` runs the same code on the tiny test model (64 px,
2 steps, no VRAM figures) to check that the table code works.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import WORK

MB = 1024 * 1024
FP16_DIR = WORK / "sd15-random-fp16"
PROMPT = "a photo of the red castle at dusk"
# (row label, OptimizationConfig fields): every VRAM preset, then every offload mode.
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("preset none", {"vram_preset": "none"}),
    ("preset 8gb", {"vram_preset": "8gb"}),
    ("preset 6gb", {"vram_preset": "6gb"}),
    ("preset 4gb", {"vram_preset": "4gb"}),
    ("preset 3gb", {"vram_preset": "3gb"}),
    ("preset 2gb", {"vram_preset": "2gb"}),
    ("offload none", {"vram_preset": "none"}),
    ("offload model", {"vram_preset": "none", "enable_model_cpu_offload": True}),
    ("offload sequential", {"vram_preset": "none", "enable_sequential_cpu_offload": True}),
    ("offload group", {"vram_preset": "none", "enable_group_offload": True}),  # leaf level
    ("fp8 resident", {"vram_preset": "none", "weight_storage": "fp8"}),
    (
        "fp8 + offload model",
        {"vram_preset": "none", "weight_storage": "fp8", "enable_model_cpu_offload": True},
    ),
    (
        "fp8 + offload group",
        {"vram_preset": "none", "weight_storage": "fp8", "enable_group_offload": True},
    ),
]


@dataclass
class Row:
    """One measured configuration."""

    label: str
    applied: list[str] = field(default_factory=list)
    seconds: float | None = None
    peak_allocated_mb: float | None = None
    peak_driver_mb: float | None = None
    estimate_mb: float | None = None
    error: str = ""

    @property
    def estimate_error_pct(self) -> float | None:
        """(estimate - measured) / measured x 100, against max_memory_allocated."""
        if self.estimate_mb is None or not self.peak_allocated_mb:
            return None
        return (self.estimate_mb - self.peak_allocated_mb) / self.peak_allocated_mb * 100


class DriverPeak:
    """Samples the driver's used-memory figure (mem_get_info) every 10 ms; keeps the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(0.01)

    def __enter__(self) -> DriverPeak:
        self.peak = self._used()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())


def nvidia_smi_used_mb() -> float | None:
    """The used memory nvidia-smi reports for GPU 0, or None."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return float(out.stdout.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def ensure_fp16_model() -> Path:
    """Build the full-size random SD v1.5 in fp16 (on the GPU, fast) and save it once."""
    if (FP16_DIR / "model_index.json").is_file():
        return FP16_DIR
    from bench.models import build_pipeline

    started = time.perf_counter()
    with torch.device("cuda"):
        pipe = build_pipeline(dtype=torch.float16)
    tmp = FP16_DIR.with_name(FP16_DIR.name + ".partial")
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(FP16_DIR)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    print(f"built fp16 model in {time.perf_counter() - started:.0f}s", flush=True)
    return FP16_DIR


def estimate_for(model_dir: Path, opt: Any, device: str, size: int, precision: str) -> float:
    """The engine's VRAM estimate for the resolved optimization flags."""
    from engine.vram import estimate_vram, resolve_optimizations

    resolved, _ = resolve_optimizations(opt, device)
    return estimate_vram(
        str(model_dir),
        precision=precision,
        width=size,
        height=size,
        guidance=True,
        attention_slicing=resolved.enable_attention_slicing,
        vae_slicing=resolved.enable_vae_slicing,
        vae_tiling=resolved.enable_vae_tiling,
        model_cpu_offload=resolved.enable_model_cpu_offload,
        sequential_cpu_offload=resolved.enable_sequential_cpu_offload,
        group_offload=resolved.enable_group_offload,
        weight_storage=resolved.weight_storage,
    ).total_mb


def measure_row(
    label: str, fields: dict[str, Any], model_dir: Path, device: str, size: int, steps: int
) -> Row:
    """Load the model through the engine with one setting, warm up, then time one image."""
    from engine.config import AppConfig, GenerationConfig, ModelConfig, OptimizationConfig
    from engine.generator import TextToImageGenerator

    cuda = device.startswith("cuda")
    precision = "fp16" if cuda else "fp32"
    opt = OptimizationConfig(**fields)
    row = Row(label, estimate_mb=estimate_for(model_dir, opt, device, size, precision))
    config = AppConfig(
        model=ModelConfig(model_id=str(model_dir), device=device, precision=precision),
        optimization=opt,
        generation=GenerationConfig(width=size, height=size, num_inference_steps=steps),
    )
    gen = TextToImageGenerator(config)
    try:
        gen.load_model()
        row.applied = list(gen.slot.applied)
        gen.generate(PROMPT, seed=1, num_inference_steps=2)  # warm-up (kernels, hooks)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            with DriverPeak() as driver:
                started = time.perf_counter()
                gen.generate(PROMPT, seed=1)
                torch.cuda.synchronize()
                row.seconds = time.perf_counter() - started
            row.peak_allocated_mb = torch.cuda.max_memory_allocated() / MB
            row.peak_driver_mb = driver.peak / MB
        else:
            started = time.perf_counter()
            gen.generate(PROMPT, seed=1)
            row.seconds = time.perf_counter() - started
    except Exception as exc:  # report the failing row, measure the others
        row.error = f"{type(exc).__name__}: {str(exc)[:120]}"
    finally:
        gen.unload()
        del gen
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(
    rows: list[Row], size: int, steps: int, device_name: str, precision: str = "fp16"
) -> str:
    """The result table (markdown)."""
    lines = [
        f"Device: {device_name}; {size}x{size}, {steps} steps, {precision}, CFG 7.5, "
        "DPM++ 2M Karras",
        "",
        "| Setting | Applied | s/image | max_memory_allocated MB | driver peak MB | estimate MB "
        "| estimator error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = r.estimate_error_pct
        lines.append(
            f"| {r.label} | {', '.join(r.applied) or '-'} | {_fmt(r.seconds, '.2f')} "
            f"| {_fmt(r.peak_allocated_mb, ',.0f')} | {_fmt(r.peak_driver_mb, ',.0f')} "
            f"| {_fmt(r.estimate_mb, ',.0f')} | {_fmt(err, '+.0f')}{'%' if err is not None else ''}"
            f"{' ERROR ' + r.error if r.error else ''} |"
        )
    return "\n".join(lines)


def training_vram(model_dir: Path, device: str, size: int, steps: int) -> dict[str, Any]:
    """Peak VRAM and s/step of LoRA training with the default trainer settings."""
    from bench.training import make_dataset
    from engine.training.config import TrainConfig
    from engine.training.trainer import LoraTrainer

    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        config = TrainConfig(
            dataset_dir=make_dataset(Path(tmp) / "data", count=4, size=size),
            output_dir=Path(tmp) / "out",
            model=str(model_dir),
            resolution=size,
            max_steps=steps + 1,
            checkpoint_every=0,
            sample_steps=0,
            device=device,
        )
        trainer = LoraTrainer(config)
        trainer.setup()
        trainer.train_steps(1)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        if cuda:
            with DriverPeak() as driver:
                trainer.train_steps(steps)
                torch.cuda.synchronize()
        else:
            trainer.train_steps(steps)
        per_step = (time.perf_counter() - started) / steps
        options = dict(trainer.options)
        trainer.abort()
    return {
        "resolution": size,
        "options": options,
        "seconds_per_step": per_step,
        "peak_allocated_mb": torch.cuda.max_memory_allocated() / MB if cuda else None,
        "peak_driver_mb": driver.peak / MB if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every row, print the table, and write JSON (to --out or bench/_work)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model: test the code")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="row labels to run")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", WORK)))
    args = parser.parse_args(argv)
    from bench import quiet

    quiet()
    if args.dry_run:
        from bench.models import tiny_model_dir

        device, model_dir, size, steps = "cpu", tiny_model_dir(), 64, 2
        device_name = "CPU dry run (tiny model, no VRAM figures)"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device; use --dry-run on the CPU")
        device, model_dir, size, steps = "cuda", ensure_fp16_model(), 512, 20
        device_name = torch.cuda.get_device_name(0)
    size = args.size or size
    steps = args.steps or steps
    started = time.perf_counter()
    rows: list[Row] = []
    for label, fields in ROWS:
        if args.only and label not in args.only:
            continue
        rows.append(measure_row(label, fields, model_dir, device, size, steps))
        r = rows[-1]
        print(
            f"  {label}: {_fmt(r.seconds, '.2f')}s, {_fmt(r.peak_allocated_mb, '.0f')} MB {r.error}"
        )
    table = format_table(rows, size, steps, device_name, "fp32" if args.dry_run else "fp16")
    print(table)
    result: dict[str, Any] = {
        "device": device_name,
        "size": size,
        "steps": steps,
        "rows": [{**r.__dict__, "estimate_error_pct": r.estimate_error_pct} for r in rows],
        "table": table,
        "nvidia_smi_used_mb_after": nvidia_smi_used_mb() if device == "cuda" else None,
    }
    if not args.no_training:
        train_size = 64 if args.dry_run else 512
        result["training"] = training_vram(model_dir, device, train_size, 2 if args.dry_run else 5)
        t = result["training"]
        print(
            f"LoRA training {train_size} px (defaults: {t['options']}): "
            f"{t['seconds_per_step']:.2f} s/step, peak allocated "
            f"{_fmt(t['peak_allocated_mb'], ',.0f')} MB, driver peak {_fmt(t['peak_driver_mb'], ',.0f')} MB"
        )
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("gpu_dry_run.json" if args.dry_run else "gpu_results.json")).write_text(
        json.dumps(result, indent=2, default=str)
    )
    print(f"done in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
