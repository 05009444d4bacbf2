"""Safe file names and paths under the output/LoRA roots, and atomic file and folder writes."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PureWindowsPath

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 64
PARTIAL_SUFFIX = ".partial"
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_SEPARATORS = re.compile(r"[/\\]")


class UnsafePathError(ValueError):
    """A user-supplied name or path is unusable or would leave its root folder."""


def _is_reserved(component: str) -> bool:
    # Windows ignores extensions and trailing dots/spaces: "con.txt" and "CON " are the device too.
    stem = component.split(".", 1)[0].rstrip(" ").upper()
    return stem in _RESERVED


def _is_absolute(text: str) -> bool:
    return text.startswith(("/", "\\")) or bool(PureWindowsPath(text).drive)


def safe_name(name: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """A file/folder name made from a user's text: ``[A-Za-z0-9_.-]``, no leading dot, short."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if "\x00" in name:
        raise UnsafePathError("name contains a NUL character")
    if _is_absolute(name):
        raise UnsafePathError(f"name {name!r} is an absolute path; give a plain name")
    if ".." in _SEPARATORS.split(name):
        raise UnsafePathError(f"name {name!r} contains '..'; give a plain name")
    # Fold accents and compatibility forms to ASCII where possible ("café" -> "cafe").
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _UNSAFE_CHARS.sub("_", text).lstrip(".")
    text = text[:max_length].rstrip(".")
    if not re.search(r"[A-Za-z0-9]", text):
        raise UnsafePathError(
            f"name {name!r} has no letters or digits that can be used in a file name"
        )
    if _is_reserved(text):
        raise UnsafePathError(
            f"name {name!r} is reserved on Windows ({text.split('.')[0].upper()})"
        )
    return text


def safe_join(root: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> Path:
    """Join relative ``parts`` onto ``root`` and resolve; raise UnsafePathError if it leaves root."""
    base = Path(root).resolve()
    cleaned: list[str] = []
    for part in parts:
        text = os.fspath(part)
        if not text:
            raise UnsafePathError("empty path part")
        if "\x00" in text:
            raise UnsafePathError("path part contains a NUL character")
        if _is_absolute(text):
            raise UnsafePathError(
                f"path part {text!r} is absolute; only relative parts may be joined"
            )
        # Treat backslashes as separators everywhere, so "..\\x" is caught on Linux as on Windows.
        components = [c for c in _SEPARATORS.split(text) if c]
        reserved = [c for c in components if _is_reserved(c)]
        if reserved:
            raise UnsafePathError(
                f"path part {text!r} uses a name reserved on Windows: {reserved[0]}"
            )
        cleaned.extend(components)
    result = base.joinpath(*cleaned).resolve()
    if result != base and not result.is_relative_to(base):
        raise UnsafePathError(f"path {'/'.join(cleaned)!r} escapes the folder {base}")
    return result


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(final_path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final_path``; rename it into place only on success."""
    final = Path(final_path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=PARTIAL_SUFFIX, dir=final.parent))
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} appeared while it was being written")
            old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old{PARTIAL_SUFFIX}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(final.parent)


def remove_partials(folder: str | os.PathLike[str]) -> int:
    """Delete temporaries left in ``folder`` by an interrupted atomic write; return how many."""
    removed = 0
    base = Path(folder)
    if not base.is_dir():
        return 0
    for entry in base.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(PARTIAL_SUFFIX):
            _remove(entry)
            removed += 1
    if removed:
        log.info("Removed %d unfinished temporary file(s) from %s", removed, base)
    return removed


@dataclass(frozen=True)
class FileRoots:
    """Where generated images and LoRA folders are kept; builds safe paths inside them."""

    outputs_dir: Path
    lora_dir: Path
    embedding_dir: Path = Path("models/embeddings")

    def image_path(self, job_id: int, index: int, *, when: datetime | None = None) -> Path:
        """Path of image ``index`` of a job: ``outputs/YYYY-MM-DD/job<id>-<index>.png``."""
        if job_id < 0 or index < 0:
            raise ValueError("job_id and index must be non-negative")
        day = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
        return safe_join(self.outputs_dir, day, f"job{int(job_id)}-{int(index)}.png")

    def remove_images(self, paths: Iterable[str]) -> int:
        """Delete these image files if they lie under the outputs root; return how many went."""
        root = self.outputs_dir.resolve()
        removed = 0
        for text in paths:
            path = Path(text).resolve()  # a symlink pointing elsewhere resolves outside the root
            if not path.is_relative_to(root):
                log.warning("not deleting %s: it is not under %s", text, root)
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc)
        return removed

    def source_path(self, sha256: str) -> Path:
        """Path of an img2img source image, named by its content: ``outputs/sources/ab/<sha>.png``."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return safe_join(self.outputs_dir, "sources", sha256[:2], f"{sha256}.png")

    def lora_path(self, name: str) -> Path:
        """Folder of the LoRA called ``name`` (sanitised) under the LoRA root."""
        return safe_join(self.lora_dir, safe_name(name))

    def embedding_path(self, name: str) -> Path:
        """File of the embedding called ``name`` (sanitised): ``<root>/<name>.safetensors``."""
        return safe_join(self.embedding_dir, safe_name(name) + ".safetensors")
