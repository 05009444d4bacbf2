"""Benchmark suite (issue 6): engine, Discord path, event loop, LoRA, memory, queue, GPU."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "_work"
RESULTS_JSON = WORK / "results.json"
THREADS = 1  # on the 2 shared cores one thread was 1.5-2x faster and steadier than two


def set_threads(n: int = THREADS) -> None:
    """Pin torch to n intra-op threads (the suite's measurements all use the same number)."""
    import torch

    # The engine leaves torch's thread count alone when OMP_NUM_THREADS is set (engine/cpu.py).
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return float(statistics.median(values))


def alternate(
    a: Callable[[], Any], b: Callable[[], Any], pairs: int, label: str = ""
) -> dict[str, Any]:
    """Time a and b alternately (a, b, b, a, ...) `pairs` times; per-pair ratios b/a and medians."""
    times_a: list[float] = []
    times_b: list[float] = []
    for i in range(pairs):
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        for side, fn in order:
            started = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - started
            (times_a if side == "a" else times_b).append(elapsed)
        if label:
            print(f"  {label} pair {i + 1}/{pairs}: {times_a[-1]:.3f}s vs {times_b[-1]:.3f}s")
    return summarize_pairs(times_a, times_b)


def summarize_pairs(times_a: list[float], times_b: list[float]) -> dict[str, Any]:
    """Median ratio b/a over pairs, plus the absolute medians and raw times."""
    ratios = [tb / ta for ta, tb in zip(times_a, times_b, strict=True)]
    return {
        "pairs": len(ratios),
        "median_ratio": median(ratios),
        "ratios": ratios,
        "median_a_s": median(times_a),
        "median_b_s": median(times_b),
        "median_diff_s": median([tb - ta for ta, tb in zip(times_a, times_b, strict=True)]),
        "times_a_s": times_a,
        "times_b_s": times_b,
    }


def record(name: str, data: dict[str, Any]) -> None:
    """Merge one benchmark's figures into bench/_work/results.json."""
    WORK.mkdir(parents=True, exist_ok=True)
    existing: dict[str, Any] = {}
    if RESULTS_JSON.is_file():
        try:
            existing = json.loads(RESULTS_JSON.read_text())
        except ValueError:
            existing = {}
    existing[name] = {**data, "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS_JSON.write_text(json.dumps(existing, indent=2, default=str))


def load_average() -> str:
    """The 1/5/15-minute load averages, to note how busy the machine was."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def quiet() -> None:
    """Silence progress bars and library chatter so the figures stand out."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass
