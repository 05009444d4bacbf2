"""Run the benchmark suite: python -m bench [--quick] [--only NAME ...] [--skip NAME ...]."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import RESULTS_JSON, THREADS, load_average, quiet, record, set_threads

GROUPS = (
    "engine",
    "discord",
    "looplag",
    "lora",
    "memory",
    "queue",
    "training",
    "fastpath",
    "rayscale",
    "apicost",
    "soak",
)
DEFAULT = ("engine", "looplag", "lora", "discord", "memory", "queue")


def machine() -> dict[str, Any]:
    """CPU, RAM and library versions of this machine."""
    import os

    import diffusers
    import peft
    import torch
    import transformers

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = 0.0
    try:
        import psutil

        ram = psutil.virtual_memory().total / 1024**3
    except ImportError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(ram, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": THREADS,
    }


def plan(quick: bool) -> dict[str, Callable[[], Any]]:
    """The benchmark callables with their repetition counts (smaller with --quick)."""
    from bench import engine_bench as eb
    from bench.api_cost import api_cost
    from bench.discord_bench import discord_overhead
    from bench.fast_path import fast_path
    from bench.memory import peak_memory
    from bench.models import ensure_sd15, tiny_model_dir
    from bench.queue_scale import queue_scale
    from bench.ray_scale import ray_parts, sim
    from bench.soak import soak
    from bench.training import training

    def discord() -> list[Any]:
        eb.release_full_generator()  # the bot loads its own copy
        out = [
            discord_overhead(
                tiny_model_dir(),
                "tiny",
                6 if quick else 15,
                {"width": 64, "height": 64, "num_inference_steps": 3},
            )
        ]
        if not quick:
            out.append(
                discord_overhead(
                    ensure_sd15(),
                    "full",
                    4,
                    {"width": 256, "height": 256, "num_inference_steps": 4},
                )
            )
        return out

    return {
        "engine": lambda: eb.engine_overhead(pairs=3, steps=2 if quick else 4),
        "looplag": lambda: eb.loop_lag(steps=2 if quick else 4, idle_s=2 if quick else 5),
        "lora": lambda: eb.lora_switch(pairs=4 if quick else 10),
        "discord": discord,
        "memory": lambda: peak_memory(
            steps=1 if quick else 2, settings=["baseline", "attention slicing"] if quick else None
        ),
        "queue": queue_scale,
        "training": lambda: training(steps=1 if quick else 2),
        "fastpath": lambda: fast_path(tiny=quick),
        "rayscale": lambda: (sim(quick), ray_parts(quick, {"throughput", "overhead"})),
        "apicost": lambda: api_cost(pairs=3 if quick else 5, full=not quick),
        "soak": lambda: soak(jobs=100 if quick else 500),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the chosen benchmarks in order and print a JSON summary."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer pairs and steps (a few minutes)"
    )
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups")
    parser.add_argument("--skip", nargs="+", choices=GROUPS, default=[], help="skip these groups")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results.json entries")
    args = parser.parse_args(argv)
    quiet()
    set_threads()
    if args.fresh and RESULTS_JSON.is_file():
        RESULTS_JSON.unlink()
    chosen = [g for g in (args.only or DEFAULT) if g not in args.skip]
    info = {
        **machine(),
        "command": "python -m bench " + " ".join(argv or sys.argv[1:]),
        "load_at_start": load_average(),
    }
    record("machine", info)
    print(json.dumps(info))
    jobs = plan(args.quick)
    started = time.perf_counter()
    failures = 0
    for name in chosen:
        t0 = time.perf_counter()
        print(f"== {name} (load {load_average()})", flush=True)
        try:
            jobs[name]()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failures += 1
            logging.exception("benchmark %s failed", name)
            record(f"error_{name}", {"error": repr(exc)})
        print(f"== {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
    total = time.perf_counter() - started
    record(
        "suite",
        {"groups": chosen, "quick": args.quick, "seconds": total, "load_at_end": load_average()},
    )
    print(f"suite finished in {total:.0f}s; figures in {RESULTS_JSON}")
    from bench.report import summary

    print(summary())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
