"""Model loading: hub ids, local diffusers folders, single-file checkpoints, and the bundled demo."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from engine.errors import EngineError, ModelNotAvailableError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = PROJECT_ROOT / "models" / "demo"
ALIASES = {"demo": DEMO_MODEL_DIR}
SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_ADVICE = (
    "pickle files can run arbitrary code; set MODEL_ALLOW_CKPT=true only if you trust them"
)
MODEL_DEFAULTS_FILE = "engine_defaults.json"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a hub repository, a local diffusers folder, or one file."""

    kind: Literal["hub", "folder", "single_file"]
    location: str


def offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model_source(model_id: str, allow_ckpt: bool = False) -> ModelSource:
    """Classify a model reference; raise EngineError for missing paths and refused formats."""
    ref = model_id.strip()
    if not ref:
        raise EngineError("model: empty model id; set MODEL_ID to a hub id, a folder or a file")
    if ref.lower() in ALIASES:
        folder = ALIASES[ref.lower()]
        if not (folder / "model_index.json").is_file():
            raise EngineError(f"model: the bundled '{ref}' model is missing from {folder}")
        if not allow_ckpt:
            check_folder_weights(folder)
        return ModelSource("folder", str(folder))
    path = Path(ref).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EngineError(
                f"model: {path} is a folder but not a diffusers model (no model_index.json)"
            )
        if not allow_ckpt:
            check_folder_weights(path)
        return ModelSource("folder", str(path))
    if path.is_file():
        if suffix in SINGLE_FILE_SUFFIXES:
            return ModelSource("single_file", str(path))
        if suffix in PICKLE_SUFFIXES:
            if not allow_ckpt:
                raise EngineError(
                    f"model: {path.name} is a pickle checkpoint, which can run arbitrary code; "
                    "use a .safetensors file, or set MODEL_ALLOW_CKPT=true if you trust it"
                )
            return ModelSource("single_file", str(path))
        raise EngineError(f"model: {path.name} is not a .safetensors checkpoint or a folder")
    looks_like_path = (
        suffix in SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES
        or ref.startswith((".", "/", "~", "\\"))
        or "\\" in ref
        or ref.count("/") > 1
        or (len(ref) > 1 and ref[1] == ":")
    )
    if looks_like_path:
        raise EngineError(f"model: path not found: {ref}")
    if ref.count("/") != 1:
        raise EngineError(
            f"model: {ref!r} is neither an existing path nor a hub id like 'owner/name'"
        )
    return ModelSource("hub", ref)


def check_folder_weights(folder: Path) -> None:
    """Raise EngineError when a component of a diffusers folder has only pickle weights."""
    pickled = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in sub.iterdir() if f.is_file()]
        has_safe = any(f.suffix.lower() == ".safetensors" for f in files)
        pickles = [f.name for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not has_safe:
            pickled.append(f"{sub.name}/{pickles[0]}")
    if pickled:
        raise EngineError(
            f"model: {folder} has pickle weights without .safetensors ({', '.join(pickled)}); "
            f"convert them to .safetensors (save_pretrained(..., safe_serialization=True)); "
            + PICKLE_ADVICE
        )


def read_model_defaults(source: ModelSource) -> dict[str, Any]:
    """Generation defaults a model folder recommends (engine_defaults.json), if it has any."""
    if source.kind != "folder":
        return {}
    path = Path(source.location) / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _not_available(ref: str, cache_dir: Path, exc: Exception) -> ModelNotAvailableError:
    how = (
        "the hub is switched off (HF_HUB_OFFLINE=1 or MODEL_LOCAL_FILES_ONLY=true)"
        if offline()
        else "it could not be downloaded"
    )
    return ModelNotAvailableError(
        f"model {ref!r} is not in the cache ({cache_dir}) and {how}. Run once with internet "
        "access to download it, point MODEL_ID at a local folder or .safetensors file, or use "
        f"MODEL_ID=demo for the bundled offline model. ({type(exc).__name__})"
    )


def load_pipeline(
    source: ModelSource,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: Path = Path("models/cache"),
    local_files_only: bool = False,
    safety_checker: bool = False,
    single_file_config: str | None = None,
    allow_ckpt: bool = False,
) -> Any:
    """Load a StableDiffusionPipeline (on the CPU) from a resolved source.

    Folders and hub ids load .safetensors weights only unless allow_ckpt (MODEL_ALLOW_CKPT).
    """
    from diffusers import StableDiffusionPipeline

    local_only = local_files_only or offline()
    # None lets diffusers fall back to pickle .bin files when a component has no safetensors.
    extra: dict[str, Any] = {"use_safetensors": None if allow_ckpt else True}
    if not safety_checker:
        extra.update(safety_checker=None, requires_safety_checker=False)
    try:
        if source.kind == "folder":
            pipe = StableDiffusionPipeline.from_pretrained(
                source.location, dtype=dtype, local_files_only=True, **extra
            )
        elif source.kind == "single_file":
            kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local_only}
            if single_file_config:
                kwargs["config"] = single_file_config
            if not safety_checker:
                kwargs["safety_checker"] = None
            pipe = StableDiffusionPipeline.from_single_file(source.location, **kwargs)
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            pipe = _from_hub(source.location, dtype, cache_dir, local_only, extra)
    except EngineError:
        raise
    except (OSError, ValueError) as exc:
        if not allow_ckpt and source.kind != "single_file" and ".safetensors" in str(exc):
            raise EngineError(
                f"model: {source.location} has no .safetensors weights ({exc}); " + PICKLE_ADVICE
            ) from exc
        if source.kind == "hub" or (source.kind == "single_file" and not single_file_config):
            raise _not_available(source.location, cache_dir, exc) from exc
        raise EngineError(f"model: could not load {source.location}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_hub(
    repo: str, dtype: torch.dtype, cache_dir: Path, local_only: bool, extra: dict[str, Any]
) -> Any:
    """Load from the hub cache, preferring the smaller fp16 files when running in half precision."""
    from diffusers import StableDiffusionPipeline

    common = {
        "dtype": dtype,
        "cache_dir": str(cache_dir),
        "local_files_only": local_only,
        **extra,
    }
    if dtype != torch.float32:
        try:
            return StableDiffusionPipeline.from_pretrained(repo, variant="fp16", **common)
        except (OSError, ValueError):
            log.info("no fp16 variant of %s available; loading the full-precision files", repo)
    return StableDiffusionPipeline.from_pretrained(repo, **common)
