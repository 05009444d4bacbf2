"""Generation parameters in the PNG `parameters` text chunk, in the most used web UI's format."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from PIL.PngImagePlugin import PngInfo

VERSION = "sd-discord-bot 0.1"


def format_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    lora: str | None = None,
    lora_scale: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """The three-part parameters text: prompt, 'Negative prompt: ...', then 'Key: value, ...'."""
    fields: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if lora:
        fields["Lora"] = lora
        fields["Lora weight"] = f"{lora_scale if lora_scale is not None else 1.0:g}"
    fields.update(extra or {})
    fields["Version"] = VERSION
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items())
    parts = [prompt.replace("\n", " ")]
    if negative_prompt:
        parts.append("Negative prompt: " + negative_prompt.replace("\n", " "))
    parts.append(line)
    return "\n".join(parts)


def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in ',:"'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


_FIELD_RE = re.compile(r'\s*([\w \-/]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse a parameters text back into prompt, negative prompt and the key/value fields."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines and "Steps:" in lines[-1] else ""
    body = lines[:-1] if last else lines
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines),
    }
    for key, value in _FIELD_RE.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"')
        result[key.strip()] = value
    return result


def png_info(parameters: str) -> PngInfo:
    """A PngInfo with the parameters text chunk."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    return info


def read_parameters(path: str | Path) -> str | None:
    """The parameters text chunk of a PNG file, or None."""
    with Image.open(path) as image:
        return image.info.get("parameters")


def save_png(image: Image.Image, path: str | Path, parameters: str | None) -> Path:
    """Write a PNG with its parameters chunk atomically (temporary name, then rename)."""
    info = png_info(parameters) if parameters else None
    return _write_atomically(Path(path), lambda handle: image.save(handle, "PNG", pnginfo=info))


def save_png_bytes(png: bytes, path: str | Path) -> Path:
    """Write PNG bytes made elsewhere (a remote worker's) the same way: fsynced, then renamed."""
    return _write_atomically(Path(path), lambda handle: handle.write(png))


def _write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
