"""MODEL_CHOICES: the base models the owner allows, by name, their family and inpainting partner.

The family is the width of the text encoder's token embeddings (768 for SD 1.x, 1024 for SD 2.x),
which is also the UNet's cross-attention width: a LoRA or an embedding made for one width cannot
run on another. It is read from the model's config files (no weights are loaded), from a
single-file checkpoint's header, or from a table of the documented hub models.

The UNet's input channels are read the same way: 9 marks an inpainting checkpoint (latents,
mask, masked picture), which region jobs of its family run on (`ModelCatalog.inpaint_partner`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.pipeline import ModelSource, read_model_defaults, resolve_model_source

log = logging.getLogger(__name__)

CHOICE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# Text-encoder widths of the documented examples, for when their configs are not cached yet.
KNOWN_WIDTHS: dict[str, int] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": 768,
    "runwayml/stable-diffusion-v1-5": 768,
    "segmind/small-sd": 768,
    "segmind/tiny-sd": 768,
    "OFA-Sys/small-stable-diffusion-v0": 768,
    "stabilityai/stable-diffusion-2-1-base": 1024,
    "stabilityai/stable-diffusion-2-1": 1024,
}
FAMILY_NAMES = {768: "SD 1.x", 1024: "SD 2.x"}
PLAIN_CHANNELS, INPAINT_CHANNELS = 4, 9
# The documented inpainting checkpoints on the hub (the KNOWN_WIDTHS models are all 4-channel).
KNOWN_INPAINTING: dict[str, int] = {
    "stable-diffusion-v1-5/stable-diffusion-inpainting": 768,
    "runwayml/stable-diffusion-inpainting": 768,
    "stabilityai/stable-diffusion-2-inpainting": 1024,
}
# Single-file checkpoints: the token embedding of SD 1.x (CLIP) and SD 2.x (OpenCLIP).
_SINGLE_FILE_KEYS = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.model.token_embedding.weight",
    "text_encoder.text_model.embeddings.token_embedding.weight",
)
# Single-file checkpoints: the UNet's first convolution, [out, in_channels, 3, 3].
_CONV_IN_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "unet.conv_in.weight")


def family_name(width: int | None) -> str:
    """A reader's name for an architecture family: 'SD 1.x', 'SD 2.x' or 'N-wide'."""
    if width is None:
        return "unknown architecture"
    return FAMILY_NAMES.get(width, f"{width}-wide text encoder")


@dataclass(frozen=True)
class ModelChoice:
    """One allowed model: the name users pick and where it loads from."""

    name: str
    source: str


def parse_model_choices(text: str) -> list[ModelChoice]:
    """Parse `name=source,name=source`; ValueError naming the bad entry."""
    choices: list[ModelChoice] = []
    seen: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, source = entry.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            raise ValueError(f"entry {entry!r} must look like name=source")
        if not CHOICE_NAME_RE.match(name):
            raise ValueError(
                f"model name {name!r} may only use letters, digits, '_', '-' and '.' "
                "(not first), at most 64 characters"
            )
        if name.lower() in seen:
            raise ValueError(f"model name {name!r} is listed twice")
        seen.add(name.lower())
        choices.append(ModelChoice(name, source))
    return choices


def default_model_name(model_id: str) -> str:
    """The name a model reference goes by when MODEL_CHOICES does not name it."""
    ref = model_id.strip()
    if ref.lower() == "demo":
        return "demo"
    path = Path(ref).expanduser()
    if path.exists() or ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return path.stem
    return ref


class ModelCatalog:
    """The allowed models by name: the startup MODEL_ID (the default) plus MODEL_CHOICES."""

    def __init__(self, model_id: str, choices: str = "", cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self.choices = parse_model_choices(choices)
        startup = next((c for c in self.choices if c.source == model_id.strip()), None)
        self.default = startup.name if startup else default_model_name(model_id)
        if startup is None:
            self.choices.insert(0, ModelChoice(self.default, model_id.strip()))
        self._widths: dict[str, int | None] = {}
        self._channels: dict[str, int | None] = {}

    def names(self) -> list[str]:
        """Every allowed name, the default first."""
        return [c.name for c in self.choices]

    def find(self, name: str) -> ModelChoice | None:
        """The choice called `name` (any letter case), or None."""
        wanted = name.strip().lower()
        return next((c for c in self.choices if c.name.lower() == wanted), None)

    def resolve(self, name: str | None) -> str:
        """The canonical name for `name` (None: the default); ValueError for an unknown one."""
        if name is None or not str(name).strip():
            return self.default
        choice = self.find(str(name))
        if choice is None:
            raise ValueError(
                f"model: unknown model {name!r}; choose one of {', '.join(self.names())}"
            )
        return choice.name

    def source(self, name: str) -> str:
        """The model reference (hub id, folder, file) of an allowed name."""
        return self.choices[self.names().index(self.resolve(name))].source

    def check_sources(self, allow_ckpt: bool = False) -> None:
        """Raise EngineError naming the first choice whose source is missing or refused."""
        for choice in self.choices:
            try:
                resolve_model_source(choice.source, allow_ckpt)
            except EngineError as exc:
                raise EngineError(f"MODEL_CHOICES {choice.name}={choice.source}: {exc}") from None

    def defaults(self, name: str, allow_ckpt: bool = False) -> dict[str, Any]:
        """The generation defaults a model folder recommends (engine_defaults.json)."""
        try:
            return read_model_defaults(resolve_model_source(self.source(name), allow_ckpt))
        except EngineError:
            return {}

    def width(self, name: str, allow_ckpt: bool = False) -> int | None:
        """The text-encoder width of an allowed model, or None when it cannot be read cheaply."""
        key = self.resolve(name)
        if key not in self._widths:
            try:
                source = resolve_model_source(self.source(key), allow_ckpt)
                self._widths[key] = source_width(source, self.cache_dir)
            except EngineError as exc:
                log.warning("model %s: cannot tell its architecture: %s", key, exc)
                self._widths[key] = None
        return self._widths[key]

    def unet_channels(self, name: str, allow_ckpt: bool = False) -> int | None:
        """The UNet's input channels (4 plain, 9 inpainting); None when it cannot be read cheaply."""
        key = self.resolve(name)
        if key not in self._channels:
            try:
                source = resolve_model_source(self.source(key), allow_ckpt)
                self._channels[key] = source_channels(source, self.cache_dir)
            except EngineError as exc:
                log.warning("model %s: cannot tell its UNet's inputs: %s", key, exc)
                self._channels[key] = None
        return self._channels[key]

    def inpaint_partner(self, name: str | None, allow_ckpt: bool = False) -> str | None:
        """The first allowed 9-channel model of `name`'s family when `name` is a 4-channel one.

        None when `name` is unknown, is itself an inpainting model, or when its inputs or family
        cannot be read (no guessing), or when no inpainting model of its family is listed.
        """
        try:
            key = self.resolve(name)
        except ValueError:
            return None
        if self.unet_channels(key, allow_ckpt) != PLAIN_CHANNELS:
            return None
        width = self.width(key, allow_ckpt)
        if width is None:
            return None
        return next(
            (
                c.name
                for c in self.choices
                if self.unet_channels(c.name, allow_ckpt) == INPAINT_CHANNELS
                and self.width(c.name, allow_ckpt) == width
            ),
            None,
        )

    def remember_width(self, name: str, width: int) -> None:
        """Record the width measured on a loaded model (more reliable than the config files)."""
        self._widths[self.resolve(name)] = width


def source_width(source: ModelSource, cache_dir: Path | None = None) -> int | None:
    """The text-encoder width from config files or a checkpoint header, without loading weights."""
    if source.kind == "folder":
        return _config_width(Path(source.location))
    if source.kind == "single_file":
        return _single_file_width(Path(source.location))
    width = KNOWN_WIDTHS.get(source.location) or KNOWN_INPAINTING.get(source.location)
    if width is not None:
        return width
    found = _hub_cached(source.location, "text_encoder/config.json", cache_dir)
    return _read_width(found) if found is not None else None


def source_channels(source: ModelSource, cache_dir: Path | None = None) -> int | None:
    """The UNet's input channels from its config or a checkpoint header, without loading weights."""
    if source.kind == "folder":
        return _read_width(Path(source.location) / "unet" / "config.json", "in_channels")
    if source.kind == "single_file":
        return _single_file_channels(Path(source.location))
    if source.location in KNOWN_INPAINTING:
        return INPAINT_CHANNELS
    if source.location in KNOWN_WIDTHS:
        return PLAIN_CHANNELS
    found = _hub_cached(source.location, "unet/config.json", cache_dir)
    return _read_width(found, "in_channels") if found is not None else None


def _hub_cached(repo: str, filename: str, cache_dir: Path | None) -> Path | None:
    """A file of a hub model when it is in the local cache (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir or ""))
    except Exception:  # hub helper errors vary by version; not knowing is the answer
        return None
    return Path(found) if isinstance(found, str) else None


def _config_width(folder: Path) -> int | None:
    return _read_width(folder / "text_encoder" / "config.json") or _read_width(
        folder / "unet" / "config.json", "cross_attention_dim"
    )


def _read_width(path: Path, key: str = "hidden_size") -> int | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _single_file_width(path: Path) -> int | None:
    return _header_dim(path, _SINGLE_FILE_KEYS, -1)


def _single_file_channels(path: Path) -> int | None:
    return _header_dim(path, _CONV_IN_KEYS, 1)


def _header_dim(path: Path, keys: tuple[str, ...], axis: int) -> int | None:
    """One dimension of the first of `keys` a .safetensors header lists (no tensor is read)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            present = set(handle.keys())
            for key in keys:
                if key in present:
                    return int(handle.get_slice(key).get_shape()[axis])
    except Exception:  # an unreadable header: not knowing is the answer
        return None
    return None
