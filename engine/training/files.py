"""Training files: atomic checkpoint folders, the diffusers LoRA file and the kohya export."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
TEMP_PREFIX = ".tmp-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


FULL_BYTES = 1 << 20  # less free than this after a failed write: the disk filled up


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write means a full disk: torch reports one as a RuntimeError ("unexpected
    pos"), safetensors as a SafetensorError ("os error 28"), Python as OSError(ENOSPC)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, Exception):
        return False
    if "No space left" in str(exc) or "os error 28" in str(exc):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes `target` only when the block finishes without error.

    A write that failed on a full disk is raised as OSError(ENOSPC) naming the folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        yield temp
        for file in temp.iterdir():
            _fsync(file)
        _fsync(temp)
        old = None
        if target.exists():
            old = target.parent / f"{TEMP_PREFIX}old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(temp, target)
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        full = _disk_full(exc, target.parent)
        shutil.rmtree(temp, ignore_errors=True)
        if full and not isinstance(exc, OSError):
            text = f"No space left on the disk holding {target.parent}"
            raise OSError(errno.ENOSPC, text, str(target)) from exc
        raise


def _fsync(path: Path) -> None:
    # Directory fsync is not possible on Windows; there the rename alone has to do.
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # A file whose data could not reach the disk must not become a checkpoint or a LoRA.
        if not path.is_dir() and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
    finally:
        os.close(fd)


def remove_temp_dirs(output_dir: Path) -> None:
    """Delete half-written folders a crash left behind."""
    if output_dir.is_dir():
        for leftover in output_dir.glob(TEMP_PREFIX + "*"):
            log.info("removing unfinished %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders (step, path), oldest first; anything else is ignored."""
    found: list[tuple[int, Path]] = []
    if not output_dir.is_dir():
        return found
    for child in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if not match or not child.is_dir():
            continue
        step = int(match.group(1))
        try:
            state = json.loads((child / STATE_NAME).read_text())
        except (OSError, ValueError):
            log.warning("ignoring incomplete checkpoint %s", child)
            continue
        if state.get("step") != step or not all(
            (child / name).is_file() for name in (WEIGHT_NAME, OPTIMIZER_NAME)
        ):
            log.warning("ignoring inconsistent checkpoint %s", child)
            continue
        found.append((step, child))
    return sorted(found)


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(
        json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )


def save_lora_file(
    folder: Path,
    unet_state: dict[str, torch.Tensor],
    text_encoder_state: dict[str, torch.Tensor] | None,
    unet_config: dict[str, Any],
    text_encoder_config: dict[str, Any] | None,
) -> Path:
    """Write pytorch_lora_weights.safetensors the diffusers way, with rank/alpha metadata."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=_contiguous(unet_state),
        text_encoder_lora_layers=_contiguous(text_encoder_state) if text_encoder_state else None,
        unet_lora_adapter_metadata=_json_safe(unet_config),
        text_encoder_lora_adapter_metadata=(
            _json_safe(text_encoder_config) if text_encoder_state and text_encoder_config else None
        ),
        safe_serialization=True,
    )
    return folder / WEIGHT_NAME


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The UNet and text-encoder peft state dicts of a file written by `save_lora_file`."""
    unet: dict[str, torch.Tensor] = {}
    text_encoder: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(path)).items():
        if key.startswith("unet."):
            unet[key.removeprefix("unet.")] = value
        elif key.startswith("text_encoder."):
            text_encoder[key.removeprefix("text_encoder.")] = value
        else:
            raise ValueError(f"unexpected key {key!r} in {path}")
    return unet, text_encoder


def export_kohya(
    path: Path,
    unet_state: dict[str, torch.Tensor],
    text_encoder_state: dict[str, torch.Tensor] | None,
    alpha: float,
    metadata: dict[str, str],
) -> Path:
    """Write the LoRA in the kohya/A1111 layout (lora_unet_*, lora_te_*, per-module alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya

    combined = {f"unet.{k}": v for k, v in unet_state.items()}
    combined.update({f"text_encoder.{k}": v for k, v in (text_encoder_state or {}).items()})
    state: dict[str, torch.Tensor] = {}
    for key, value in convert_state_dict_to_kohya(combined).items():
        # SD 1.x tools name the one text encoder lora_te_, not lora_te1_.
        key = key.replace("lora_te1_", "lora_te_", 1)
        if key.endswith(".alpha"):
            # diffusers writes alpha = rank; a trained alpha other than the rank must survive.
            value = torch.tensor(float(alpha))
        state[key] = value.detach().to("cpu").contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
