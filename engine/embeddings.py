"""Textual-inversion embeddings: check a standard file, load it once, use it by writing its name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from engine.errors import EngineError

log = logging.getLogger(__name__)

EMBEDDING_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


class EmbeddingError(EngineError, ValueError):
    """An embedding file is not a usable textual inversion for the loaded text encoder."""


@dataclass(frozen=True)
class EmbeddingInfo:
    """What an embedding file holds: its vectors and their width."""

    path: Path
    key: str
    vectors: int
    width: int


def check_embedding_name(name: str) -> str:
    """Return name if it can be written in a prompt and used as a file name; else EmbeddingError."""
    if not EMBEDDING_NAME_RE.match(name):
        raise EmbeddingError(
            f"embedding name {name!r} may only use letters, digits, '_', '-' and '.' "
            "(not first), at most 64 characters"
        )
    return name


def inspect_embedding(path: str | Path) -> EmbeddingInfo:
    """Read an embedding's shape from a safetensors file (`emb_params` or one `<token>` key)."""
    file = Path(path)
    if file.suffix.lower() != ".safetensors":
        raise EmbeddingError(f"embedding: {file.name} is not a .safetensors file")
    if not file.is_file():
        raise EmbeddingError(f"embedding: file not found: {file}")
    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
            key = "emb_params" if "emb_params" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise EmbeddingError(
                    f"embedding: {file.name} holds {len(keys)} tensors; a textual inversion "
                    "has one ('emb_params' or its token)"
                )
            shape = list(handle.get_slice(key).get_shape())
    except EmbeddingError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"embedding: {file.name} is not a readable safetensors file") from exc
    if len(shape) == 1:
        shape = [1, *shape]
    if len(shape) != 2 or not 1 <= shape[0] <= 75:
        raise EmbeddingError(f"embedding: {file.name} has shape {shape}, not [vectors, width]")
    return EmbeddingInfo(file, key, shape[0], shape[1])


def text_encoder_width(pipe: Any) -> int:
    """The width of the pipeline's token embeddings (768 for SD 1.x, 1024 for SD 2.x)."""
    return int(pipe.text_encoder.get_input_embeddings().weight.shape[1])


def load_embedding(pipe: Any, path: str | Path, name: str) -> EmbeddingInfo:
    """Load an embedding into the pipeline's tokenizer and text encoder as the token `name`."""
    check_embedding_name(name)
    info = inspect_embedding(path)
    width = text_encoder_width(pipe)
    if info.width != width:
        raise EmbeddingError(
            f"embedding {name!r} is {info.width} wide but this model's text encoder is {width} "
            "wide; it was made for another base model"
        )
    if name in pipe.tokenizer.get_vocab():
        raise EmbeddingError(f"embedding {name!r}: that word is already known to the tokenizer")
    pipe.load_textual_inversion(str(info.path), token=name)
    log.info("loaded embedding %s (%d vectors) from %s", name, info.vectors, info.path)
    return info


class EmbeddingSet:
    """The embeddings loaded into one pipeline; each is loaded once."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.loaded: dict[str, EmbeddingInfo] = {}

    def load(self, path: str | Path, name: str) -> EmbeddingInfo:
        """Load `path` as `name` unless it is loaded already (a same-named other file is refused)."""
        known = self.loaded.get(name)
        if known is not None:
            if known.path.resolve() != Path(path).resolve():
                raise EmbeddingError(f"embedding {name!r} is already loaded from {known.path}")
            return known
        info = load_embedding(self.pipe, path, name)
        self.loaded[name] = info
        return info

    def unload(self, name: str) -> bool:
        """Remove `name` (all of its vector tokens) from the tokenizer and text encoder."""
        info = self.loaded.pop(name, None)
        if info is None:
            return False
        # Multi-vector embeddings are loaded as name, name_1, ..., name_{n-1}.
        tokens = [name] + [f"{name}_{i}" for i in range(1, info.vectors)]
        self.pipe.unload_textual_inversion(tokens)
        log.info("unloaded embedding %s", name)
        return True
