"""LoRA adapters at inference: load once, keep several resident, switch per request."""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from engine.errors import LoraError

log = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_KEY_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora.down", "lora.up")
_ADAPTER_NAME_RE = re.compile(r"[^A-Za-z0-9_]")
MADE_FOR_ANOTHER = "it was made for another base model"
MISFIT = f"does not fit the loaded model ({MADE_FOR_ANOTHER})"


@dataclass(frozen=True)
class LoraFileInfo:
    """What a LoRA file holds, read from its safetensors header without loading tensors."""

    path: Path
    keys: int
    rank: int | None
    format: str  # "diffusers", "kohya" or "peft"
    has_text_encoder: bool
    metadata: dict[str, str]
    # The text width its cross-attention keys take (768 SD 1.x, 1024 SD 2.x); None: none found.
    text_width: int | None = None


def resolve_lora_file(path: str | Path) -> Path:
    """The .safetensors file for a LoRA path (a file, or a folder holding the diffusers file name)."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidate = p / WEIGHT_NAME
        if candidate.is_file():
            return candidate
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return files[0]
        raise LoraError(f"holds no {WEIGHT_NAME} (nor a single .safetensors file)", f"folder {p}")
    if not p.exists():
        raise LoraError("was not found", f"file {p}")
    if p.suffix.lower() != ".safetensors":
        raise LoraError("is not a .safetensors file", p.name)
    return p


def inspect_lora_file(path: str | Path) -> LoraFileInfo:
    """Check a file is a safetensors LoRA and describe it; raise LoraError otherwise."""
    file = resolve_lora_file(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
            metadata = handle.metadata() or {}
            rank = width = None
            for key in keys:
                if any(m in key for m in ("lora_A", "lora_down", "lora.down")) and key.endswith(
                    "weight"
                ):
                    shape = handle.get_slice(key).get_shape()
                    rank = int(shape[0]) if rank is None else rank
                    # kohya joins names with "_": attn2_to_k; diffusers and peft: attn2.to_k
                    if "attn2" in key and "to_k" in key and len(shape) == 2:
                        width = int(shape[1])
                        break
    except Exception as exc:
        log.info("LoRA file %s is not readable: %s", file, exc)
        raise LoraError("is not a readable safetensors file", file.name) from None
    lora_keys = [k for k in keys if any(m in k for m in LORA_KEY_MARKERS)]
    if not lora_keys:
        raise LoraError("holds no LoRA weights (is it a full model?)", file.name)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in lora_keys):
        fmt = "kohya"
    elif any(k.startswith(("unet.", "text_encoder.")) for k in lora_keys):
        fmt = "diffusers"
    else:
        fmt = "peft"
    has_te = any(k.startswith(("text_encoder.", "lora_te")) for k in lora_keys)
    return LoraFileInfo(file, len(keys), rank, fmt, has_te, dict(metadata), width)


def lora_display_name(path: str | Path) -> str:
    """The name a LoRA path is known by: its folder for the diffusers file name, else its stem."""
    p = Path(path)
    if p.is_dir():
        return p.name
    return p.parent.name if p.name == WEIGHT_NAME else p.stem


def adapter_name_for(name: str) -> str:
    """A peft-safe adapter name derived from a LoRA name."""
    cleaned = _ADAPTER_NAME_RE.sub("_", name) or "lora"
    return cleaned if not cleaned[0].isdigit() else "l_" + cleaned


class LoraManager:
    """Keeps up to `max_resident` adapters loaded in a pipeline and activates one per request."""

    def __init__(self, pipe: Any, max_resident: int = 8) -> None:
        self.pipe = pipe
        self.max_resident = max_resident
        self.resident: OrderedDict[str, Path] = OrderedDict()
        self.active: tuple[tuple[str, float], ...] = ()
        self._enabled = True  # peft adapters start enabled; enable_lora() walks every module
        # An adapter merged into the UNet's weights (drafts); taken out before any other change.
        self.fused: Any = None

    def fuse(self, adapter: str) -> None:
        """Merge the one active adapter into the UNet's weights (no-op when it is fused already)."""
        from engine import lora_fuse

        if self.fused is not None and self.fused.adapter == adapter:
            return
        if [name for name, _ in self.active] != [adapter]:
            raise LoraError("is not the only active adapter; it cannot be fused", f"`{adapter}`")
        self.unfuse()
        self.fused = lora_fuse.fuse(self.pipe.unet, adapter)

    def unfuse(self) -> None:
        """Take a fused adapter out of the weights again (they are then bit-identical to before)."""
        from engine import lora_fuse

        if self.fused is not None:
            fused, self.fused = self.fused, None
            lora_fuse.unfuse(fused)

    def load(self, path: str | Path, name: str | None = None) -> str:
        """Load a LoRA file as a resident adapter (no-op if already loaded); return its name.

        A LoraError names the LoRA by `name` when given (a stored file's name means nothing
        to the person who uploaded it).
        """
        try:
            info = inspect_lora_file(path)
        except LoraError as exc:
            raise exc.about(f"`{name}`") if name else exc from None
        label = f"`{name}`" if name else lora_display_name(info.path)
        adapter = adapter_name_for(name or lora_display_name(info.path))
        if adapter in self.resident and self.resident[adapter] == info.path:
            self.resident.move_to_end(adapter)
            return adapter
        self.unfuse()
        if adapter in self.resident:
            self.unload(adapter)
        while len(self.resident) >= self.max_resident:
            oldest = next(iter(self.resident))
            self.unload(oldest)
        started = time.perf_counter()
        try:
            self.pipe.load_lora_weights(
                str(info.path.parent), weight_name=info.path.name, adapter_name=adapter
            )
        except Exception as exc:
            self._forget(adapter)
            # The library's words (a state_dict size mismatch) are for the log, not the user.
            log.warning("LoRA %s (%s) did not load: %s", adapter, info.path, _short(exc))
            raise LoraError(MISFIT, label) from exc
        if not self._adapter_present(adapter):
            self._forget(adapter)
            raise LoraError(f"matched no layer of the loaded model ({MADE_FOR_ANOTHER})", label)
        self.resident[adapter] = info.path
        self._apply()
        log.info(
            "loaded LoRA %s from %s in %.2fs", adapter, info.path, time.perf_counter() - started
        )
        return adapter

    def activate(self, adapter: str | None, scale: float = 1.0) -> None:
        """Make one resident adapter active at a scale, or none (base model) when adapter is None."""
        self.activate_many([] if adapter is None else [(adapter, scale)])

    def activate_many(self, adapters: list[tuple[str, float]]) -> None:
        """Make exactly these resident adapters active, each at its scale (none: base model)."""
        for name, _scale in adapters:
            if name not in self.resident:
                raise LoraError("is not loaded", f"`{name}`")
        wanted = tuple((name, float(scale)) for name, scale in adapters)
        if wanted != self.active:
            self.unfuse()
            self.active = wanted
            self._apply()

    def _apply(self) -> None:
        if not self.resident:
            return
        if not self.active:
            if self._enabled:
                self.pipe.disable_lora()
                self._enabled = False
            return
        if not self._enabled:
            self.pipe.enable_lora()
            self._enabled = True
        self.pipe.set_adapters(
            [name for name, _ in self.active], adapter_weights=[scale for _, scale in self.active]
        )

    def unload(self, adapter: str) -> None:
        """Remove one adapter from memory."""
        if adapter not in self.resident:
            return
        self.unfuse()
        self._forget(adapter)
        self.resident.pop(adapter, None)
        self.active = tuple(pair for pair in self.active if pair[0] != adapter)
        self._apply()

    def unload_all(self) -> None:
        """Remove every adapter and return to the base weights."""
        self.unfuse()
        if self.resident:
            self.pipe.unload_lora_weights()
        self.resident.clear()
        self.active = ()
        self._enabled = True

    def _adapter_present(self, adapter: str) -> bool:
        adapters = self.pipe.get_list_adapters()
        return any(adapter in names for names in adapters.values())

    def _forget(self, adapter: str) -> None:
        try:
            if self._adapter_present(adapter):
                self.pipe.delete_adapters(adapter)
        except Exception:  # cleanup after a failed load; the original error matters more
            log.debug("could not delete adapter %s", adapter, exc_info=True)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
