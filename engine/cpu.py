"""The CPU: what it computes natively, its physical cores, and the precision and threads it gets.

Detection reads torch's own CPU probes (the cpuinfo library: Linux, Windows and macOS alike) and,
on Linux, the flags in /proc/cpuinfo; the decisions are pure functions of what was detected.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import EngineError

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flag -> torch.cpu probe (private helpers, present since torch 2.3; absent: False).
BF16_FLAGS = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
FP16_FLAGS = {"avx512_fp16": "", "amx_fp16": "_is_amx_fp16_supported"}
FLAG_NAMES = {
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_fp16": "AMX-FP16",
}


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU offers for inference: native half-precision units and its cores."""

    name: str
    capability: str  # torch's kernel level: DEFAULT, AVX2, AVX512, ...
    flags: frozenset[str]  # the FLAG_NAMES keys this CPU has
    physical_cores: int
    logical_cores: int

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix maths runs in hardware (AVX512-BF16 or AMX), not emulated."""
        return bool(self.flags & BF16_FLAGS.keys())

    @property
    def native_fp16(self) -> bool:
        """Whether fp16 matrix maths runs in hardware (AVX512-FP16 or AMX-FP16)."""
        return bool(self.flags & FP16_FLAGS.keys())

    def units(self, names: Mapping[str, str]) -> str:
        """The native units among `names`, in words ('AVX512-BF16, AMX-BF16'), or ''."""
        return ", ".join(FLAG_NAMES[f] for f in names if f in self.flags)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision images are made in on the CPU, and why."""

    precision: str  # fp32, bf16 or fp16
    reason: str
    slow: bool = False  # chosen explicitly although the CPU emulates it


def cpuinfo_flags(text: str) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo text (x86 'flags', ARM 'Features')."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpuinfo_physical_cores(text: str) -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo text; None when it does not say."""
    cores: set[tuple[str, str]] = set()
    package = core = None
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not key and core is not None:  # a blank line ends one processor's block
            cores.add((package or "0", core))
            package = core = None
    return len(cores) or None


def _torch_probe(name: str) -> bool:
    probe: Callable[[], bool] | None = getattr(torch.cpu, name, None) if name else None
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # a probe that fails says nothing either way
        return False


def _physical_cores(cpuinfo_text: str, logical: int) -> int:
    """Physical cores this process may use: psutil, else /proc/cpuinfo, else the logical count."""
    import psutil  # counts physical cores on Windows and macOS as well

    physical = psutil.cpu_count(logical=False)
    physical = physical or cpuinfo_physical_cores(cpuinfo_text) or logical
    # In a container or under taskset fewer CPUs may be ours than the machine has.
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return max(1, min(physical, allowed))


def _capability() -> str:
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else "unknown"


@functools.cache
def detect_cpu() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    try:
        text = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
    except OSError:
        text = ""
    flags = cpuinfo_flags(text) & FLAG_NAMES.keys()
    for flag, probe in {**BF16_FLAGS, **FP16_FLAGS}.items():
        if _torch_probe(probe):
            flags.add(flag)
    name = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line),
        platform.processor() or platform.machine(),
    )
    logical = os.cpu_count() or 1
    return CpuInfo(
        name=name,
        capability=_capability(),
        flags=frozenset(flags),
        physical_cores=_physical_cores(text, logical),
        logical_cores=logical,
    )


def choose_cpu_precision(requested: str, cpu: CpuInfo) -> PrecisionChoice:
    """The CPU precision for a MODEL_PRECISION / --precision value: 'auto' picks, others are kept."""
    bf16_units, fp16_units = cpu.units(BF16_FLAGS), cpu.units(FP16_FLAGS)
    if requested == "auto":
        if cpu.native_bf16:
            return PrecisionChoice("bf16", f"auto: this CPU computes bf16 natively ({bf16_units})")
        return PrecisionChoice(
            "fp32", "auto: this CPU lacks AVX512-BF16 and AMX, so fp32 is fastest"
        )
    if requested == "fp32":
        return PrecisionChoice("fp32", "set explicitly")
    half = {"bf16": (cpu.native_bf16, bf16_units), "fp16": (cpu.native_fp16, fp16_units)}
    if requested in half:
        native, units = half[requested]
        if native:
            return PrecisionChoice(requested, f"set explicitly; native on this CPU ({units})")
        return PrecisionChoice(
            requested,
            f"set explicitly, but this CPU emulates {requested}: several times slower than fp32",
            slow=True,
        )
    raise EngineError(f"unknown precision {requested!r}: use auto, fp32, bf16 or fp16")


@functools.cache
def cpu_dtype_works(dtype: torch.dtype) -> bool:
    """Whether this torch runs the layers of a Stable Diffusion model on the CPU in `dtype`."""
    try:
        with torch.no_grad():
            x = torch.randn(1, 4, 8, 8).to(dtype)
            conv = torch.nn.Conv2d(4, 8, 3, padding=1).to(dtype)
            y = torch.nn.functional.group_norm(conv(x), 2)
            seq = torch.nn.functional.silu(y).flatten(2).transpose(1, 2)
            seq = torch.nn.functional.layer_norm(seq, (8,))
            torch.nn.functional.scaled_dot_product_attention(seq, seq, seq)
            torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
        return True
    except (RuntimeError, NotImplementedError):
        return False


def cpu_dtype(requested: str, cpu: CpuInfo | None = None) -> tuple[torch.dtype, PrecisionChoice]:
    """The torch dtype to load a model in on the CPU; EngineError when this torch cannot run it."""
    choice = choose_cpu_precision(requested, cpu or detect_cpu())
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice.precision]
    if not cpu_dtype_works(dtype):
        raise EngineError(
            f"precision {choice.precision} does not run on the CPU with torch {torch.__version__}; "
            "set MODEL_PRECISION (or --precision) to auto, fp32 or bf16"
        )
    return dtype, choice


def choose_threads(setting: int, environ: Mapping[str, str], cpu: CpuInfo) -> tuple[int, str]:
    """Torch's thread count and why: OPT_CPU_THREADS, else OMP_NUM_THREADS, else physical cores.

    Hyper-threads share a core's vector units, so a thread per logical CPU only adds contention.
    """
    if setting > 0:
        return setting, "OPT_CPU_THREADS"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    return cpu.physical_cores, "physical cores"


def apply_cpu_threads(setting: int) -> tuple[int, str]:
    """Set torch's intra-op thread count for CPU inference; return the count and its source."""
    threads, source = choose_threads(setting, os.environ, detect_cpu())
    if source == "OMP_NUM_THREADS":
        # torch read it at start-up; a count the program set since (tests, bench) stays.
        return torch.get_num_threads(), source
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads, source
