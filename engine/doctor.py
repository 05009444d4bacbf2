"""`python -m engine doctor`: what an owner runs first when something is wrong.

Each check returns a small `Check`; a problem carries its fix, and `fatal` marks one that would
stop the bot (no token, no model and no way to get it, no disk). Storage and Discord settings are
read from the environment and `.env` by name, without importing `storage/` or `botcore/`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.config import ENV_FILE, ConfigError, ModelConfig, OptimizationConfig, load_config
from engine.cpu import CpuInfo, choose_threads, cpu_dtype, detect_cpu
from engine.errors import EngineError
from engine.optimizations import resolve_device
from engine.settings_base import read_env
from engine.step_cache import configured_interval, installed
from engine.vram import AUTO_THRESHOLDS, MB, pick_preset_for_free_vram, resolve_optimizations

TORCH_INDEX = "https://download.pytorch.org/whl/"
# Data folders of the bot: (label, variable, default), as in storage/settings.py and botcore/settings.py.
DATA_FOLDERS = (
    ("database", "STORAGE_DB_PATH", "data/bot.sqlite3"),
    ("outputs", "STORAGE_OUTPUTS_DIR", "outputs"),
    ("LoRA folder", "STORAGE_LORA_DIR", "models/lora"),
    ("embeddings", "STORAGE_EMBEDDING_DIR", "models/embeddings"),
    ("training data", "BOT_TRAIN_DATA_DIR", "data/train"),
)
MIN_FREE_MB = 300  # STORAGE_MIN_FREE_MB's default: below it the bot refuses new work
LOW_FREE_MB = 2048
DOWNLOAD_MB = 5 * 1024  # an SD v1.5 download with room to spare
LOW_VRAM_MB = dict(AUTO_THRESHOLDS)["2gb"]  # below this even the 2gb preset may not fit
NOT_CACHED = "not cached yet"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, what was found, and for a problem the fix."""

    name: str
    summary: str
    ok: bool = True
    fix: str = ""
    fatal: bool = False


def check_python() -> Check:
    """The Python version and platform."""
    version = platform.python_version()
    where = (
        f"{platform.python_implementation()} {version} on {platform.system()} {platform.machine()}"
    )
    return Check("python", where)


def check_torch() -> Check:
    """The torch version and the CUDA toolkit it was built with."""
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    summary = f"torch {torch.__version__} ({build})"
    if torch.version.cuda is None and shutil.which("nvidia-smi"):
        return Check(
            "torch",
            summary + ", but an NVIDIA driver is installed",
            False,
            f"install a CUDA build: pip install torch --index-url {TORCH_INDEX}cu126",
        )
    return Check("torch", summary)


def torch_build_for(major: int, minor: int) -> str:
    """The pip command for a torch build with kernels for a card of this compute capability."""
    if major < 5:
        return "no current PyTorch build supports this card; run on the CPU (MODEL_DEVICE=cpu)"
    tag = "cu128" if major >= 10 else "cu126"
    command = f"pip install --force-reinstall torch --index-url {TORCH_INDEX}{tag}"
    if major < 7 or (major, minor) == (7, 0):
        return command + " (CUDA 12.8+ builds dropped sm_50-sm_70; 12.6 builds keep them)"
    return command


def has_kernels(major: int, minor: int, arch_list: Sequence[str]) -> bool:
    """Whether torch's compiled architectures run on a card of compute capability major.minor."""
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit() or len(digits) < 2:
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True  # a binary runs on later cards of the same major version
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True  # PTX is compiled for the card when first used
    return False


def check_gpu(opt: OptimizationConfig | None = None) -> list[Check]:
    """The GPU, its compute capability, whether torch has kernels for it, and its free VRAM."""
    import torch

    if not torch.cuda.is_available():
        return [Check("gpu", "no CUDA GPU visible: images are made on the CPU (slow, but works)")]
    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    arch_list = list(torch.cuda.get_arch_list())
    gpu = Check("gpu", f"{name}, compute capability {major}.{minor} (sm_{major}{minor})")
    built = ", ".join(arch_list) or "none"
    if not has_kernels(major, minor, arch_list):
        kernels = Check(
            "kernels",
            f"torch {torch.__version__} has no kernels for sm_{major}{minor} (it has {built})",
            False,
            torch_build_for(major, minor),
            fatal=True,
        )
        return [gpu, kernels]
    free_mb = torch.cuda.mem_get_info(index)[0] / MB
    kernels = Check("kernels", f"torch has kernels for sm_{major}{minor}")
    return [gpu, kernels, check_vram(free_mb, opt)]


def check_vram(free_mb: float, opt: OptimizationConfig | None = None) -> Check:
    """Free VRAM, the preset 'auto' picks for it, and the preset in use when set explicitly."""
    auto = pick_preset_for_free_vram(free_mb)
    summary = f"{free_mb:,.0f} MB free; OPT_VRAM_PRESET=auto picks {auto}"
    if opt is not None and opt.vram_preset != "auto":
        _resolved, used = resolve_optimizations(opt, "cuda", free_mb)
        summary += f" (configured: {used})"
    if free_mb < LOW_VRAM_MB:
        return Check(
            "vram",
            summary,
            False,
            "close other programs using the GPU (browsers, games); with less than the 2gb "
            "preset needs, the engine streams weights layer by layer (several times slower)",
        )
    return Check("vram", summary)


def check_cpu(
    model: ModelConfig, opt: OptimizationConfig, cpu: CpuInfo | None = None, device: str = ""
) -> Check:
    """The CPU, the precision images get on it and why, and torch's thread count."""
    cpu = cpu or detect_cpu()
    device = device or resolve_device(model.device)
    threads, source = choose_threads(opt.cpu_threads, os.environ, cpu)
    cores = f"{cpu.physical_cores} physical / {cpu.logical_cores} logical cores"
    about = f"{cpu.name} ({cpu.capability}, {cores})"
    if device != "cpu":
        return Check("cpu", f"{about}; images are made on {device}")
    try:
        _dtype, choice = cpu_dtype(model.precision, cpu)
    except EngineError as exc:
        return Check("cpu", f"{about}: {exc}", False, "set MODEL_PRECISION=auto", fatal=True)
    plural = "s" * (threads != 1)
    summary = (
        f"{about}: images in {choice.precision} ({choice.reason}); "
        f"{threads} torch thread{plural} ({source})"
    )
    if choice.slow:
        return Check("cpu", summary, False, "set MODEL_PRECISION=auto for the fastest precision")
    return Check("cpu", summary)


def check_step_cache(opt: OptimizationConfig, device: str) -> Check:
    """Whether step caching (OPT_STEP_CACHE, the DeepCache package) runs on this device."""
    if opt.step_cache not in ("auto", "0") and not installed():
        fix = "pip install DeepCache (or pip install -e '.[speed]'), or unset OPT_STEP_CACHE"
        return Check("step cache", "asked for, but DeepCache is not installed", False, fix)
    interval = configured_interval(opt.step_cache, device)
    if interval:
        return Check("step cache", f"a full UNet pass every {interval} steps (DeepCache)")
    why = "OPT_STEP_CACHE=0" if opt.step_cache == "0" else f"auto on {device}"
    if device == "cpu" and opt.step_cache == "auto" and not installed():
        why += "; pip install -e '.[speed]' makes default images ~2x faster on a CPU"
    return Check("step cache", f"off ({why})")


def _existing(path: Path) -> Path:
    """The path itself or its nearest existing parent (where it would be created)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(
    label: str, path: Path, need_mb: float = LOW_FREE_MB, min_free_mb: float = MIN_FREE_MB
) -> Check:
    """Free disk space where `path` lives (or would be created); under ``min_free_mb``
    (STORAGE_MIN_FREE_MB) the bot refuses new work."""
    try:
        free_mb = shutil.disk_usage(_existing(path)).free / MB
    except OSError as exc:
        return Check(f"disk {label}", f"{path}: cannot be read ({exc})", False, "fix the path")
    summary = f"{path}: {free_mb:,.0f} MB free"
    if free_mb < min_free_mb:
        fix = (
            f"under STORAGE_MIN_FREE_MB={min_free_mb:,.0f} the bot refuses new work: free at "
            f"least {need_mb:,.0f} MB on that drive or move {label} elsewhere"
        )
        return Check(f"disk {label}", summary, False, fix, fatal=True)
    if free_mb < need_mb / 4:
        fix = f"free at least {need_mb:,.0f} MB on that drive or move {label} elsewhere"
        return Check(f"disk {label}", summary, False, fix, fatal=True)
    if free_mb < need_mb:
        fix = f"free some space: under {need_mb:,.0f} MB left"
        return Check(f"disk {label}", summary, False, fix)
    return Check(f"disk {label}", summary)


def min_free_setting(settings: Mapping[str, str]) -> float:
    """STORAGE_MIN_FREE_MB from the settings (a bad value: the default; the bot names it)."""
    try:
        return float(settings.get("STORAGE_MIN_FREE_MB", MIN_FREE_MB))
    except ValueError:
        return MIN_FREE_MB


def hub_model_cached(repo: str, cache_dir: Path) -> bool:
    """Whether a hub model's index and UNet weights are in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir))
        return isinstance(found, str)

    unet = (
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    )
    return cached("model_index.json") and any(cached(name) for name in unet)


def check_model(model: ModelConfig) -> Check:
    """Whether MODEL_ID is present locally, or cached, or at least downloadable."""
    from engine.pipeline import offline, resolve_model_source

    ref = model.model_id
    try:
        source = resolve_model_source(ref, model.allow_ckpt)
    except EngineError as exc:
        return Check(
            "model",
            f"MODEL_ID={ref}: {exc}",
            False,
            "set MODEL_ID to a model that exists",
            fatal=True,
        )
    if source.kind != "hub":
        return Check("model", f"MODEL_ID={ref}: {source.kind.replace('_', ' ')} {source.location}")
    if hub_model_cached(ref, model.cache_dir):
        return Check("model", f"MODEL_ID={ref}: cached in {model.cache_dir}")
    if offline() or model.local_files_only:
        return Check(
            "model",
            f"MODEL_ID={ref}: not in {model.cache_dir} and the hub is switched off",
            False,
            "run once online (unset HF_HUB_OFFLINE / MODEL_LOCAL_FILES_ONLY) or set MODEL_ID=demo",
            fatal=True,
        )
    return Check("model", f"MODEL_ID={ref}: {NOT_CACHED}; the first start downloads 2-4 GB")


def check_token(settings: Mapping[str, str], env_file: str | Path = ENV_FILE) -> Check:
    """Whether a Discord token is set (it is never printed)."""
    token = settings.get("DISCORD_TOKEN", "").strip()
    if not token:
        return Check(
            "token",
            f"no DISCORD_TOKEN in {env_file} or the environment",
            False,
            f"put DISCORD_TOKEN=<token> in {env_file} (Developer Portal -> Bot -> Reset Token)",
            fatal=True,
        )
    if token.count(".") != 2 or " " in token:
        return Check(
            "token",
            f"DISCORD_TOKEN is set ({len(token)} characters) but does not look like a bot token",
            False,
            "copy the token again from Developer Portal -> Bot -> Reset Token",
        )
    return Check("token", f"DISCORD_TOKEN is set ({len(token)} characters, not shown)")


def run_checks(env_file: str | Path = ENV_FILE) -> list[Check]:
    """Every check, in the order the report prints them."""
    checks = [check_python(), check_torch()]
    try:
        config = load_config(env_file)
    except ConfigError as exc:
        return [*checks, Check("settings", str(exc), False, "fix that setting", fatal=True)]
    model = config.model
    checks += check_gpu(config.optimization)
    checks.append(check_cpu(model, config.optimization))
    checks.append(check_step_cache(config.optimization, resolve_device(model.device)))
    checks.append(model_check := check_model(model))
    need = DOWNLOAD_MB if NOT_CACHED in model_check.summary else LOW_FREE_MB
    checks.append(check_disk("model cache", model.cache_dir, need))
    settings = read_env(env_file)
    min_free = min_free_setting(settings)
    for label, variable, default in DATA_FOLDERS:
        path = Path(settings.get(variable, default))
        checks.append(check_disk(label, path, max(LOW_FREE_MB, min_free), min_free))
    checks.append(check_token(settings, env_file))
    return checks


def format_report(checks: Sequence[Check]) -> str:
    """The report: one line per check, then each problem with its fix on one line."""
    lines = [f"{'ok' if c.ok else 'PROBLEM':<8}{c.name:<20}{c.summary}" for c in checks]
    problems = [c for c in checks if not c.ok]
    if problems:
        lines += ["", "To fix:"]
        lines += [
            f"- {c.name}: {c.fix}{' (the bot cannot start)' if c.fatal else ''}" for c in problems
        ]
    else:
        lines += ["", "No problems found."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; exit 1 when a problem would stop the bot, else 0."""
    parser = argparse.ArgumentParser(
        prog="python -m engine doctor", description="Check this machine and the bot's settings."
    )
    parser.add_argument("--env-file", default=ENV_FILE, help="settings file (default .env)")
    args = parser.parse_args(argv)
    checks = run_checks(args.env_file)
    print(format_report(checks))
    return 1 if any(c.fatal for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
