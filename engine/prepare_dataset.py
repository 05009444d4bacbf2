"""Turn a folder of user images into a clean LoRA training set (`0000.png` + `0000.txt`, ...).

Usage: python -m engine.prepare_dataset --src data/raw --dst data/train --size 512 [--buckets]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_TEMPLATE = "a photo of {trigger}"
DEFAULT_MAX_PIXELS = 50_000_000
REPORT_NAME = "prepare_report.json"
_OUTPUT_GLOB = "[0-9][0-9][0-9][0-9]"


class ImageRejected(Exception):
    """An input file cannot be used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Rejection:
    """One file that was left out, and why."""

    path: Path
    reason: str


@dataclass
class PrepareReport:
    """What a preparation run wrote, what it left out, and notes about files it changed."""

    written: list[Path] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "written": [p.name for p in self.written],
            "rejected": [{"file": r.path.name, "reason": r.reason} for r in self.rejected],
            "notes": self.notes,
        }


def caption_for(image_path: Path, trigger_word: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The sidecar `.txt` caption next to an image, else the template filled with the trigger word."""
    sidecar = image_path.with_suffix(".txt")
    if sidecar.is_file():
        try:
            text = " ".join(sidecar.read_text(encoding="utf-8", errors="replace").split())
        except OSError:
            text = ""
        if text:
            return text
    return template.replace("{trigger}", trigger_word).strip()


def load_image(
    path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, notes: list[str] | None = None
) -> Image.Image:
    """Open an untrusted image safely as 8-bit RGB: EXIF-rotated, alpha on white, first frame."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageRejected("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated ({_short(exc)})") from None
    with img:
        width, height = img.size
        # The header is read lazily: check the claimed size before decoding any pixels.
        if width * height > max_pixels:
            raise ImageRejected(f"decompression bomb: {width}x{height} is over {max_pixels} pixels")
        frames = getattr(img, "n_frames", 1)
        if frames > 1 and notes is not None:
            notes.append(f"{path.name}: animated ({frames} frames); only the first frame used")
        try:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageRejected(f"corrupt or truncated ({_short(exc)})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def bucket_sizes(
    size: int, step: int | None = None, max_ratio: float = 2.5
) -> list[tuple[int, int]]:
    """(width, height) buckets of about size*size pixels, sides multiples of `step` (size/8)."""
    step = step or max(8, size // 8 // 8 * 8)
    area = size * size
    buckets = {(size, size)}
    width = step
    while width <= size * max_ratio:
        height = int(area / width) // step * step
        if height >= step and 1 / max_ratio <= width / height <= max_ratio:
            buckets.update({(width, height), (height, width)})
        width += step
    return sorted(buckets)


def fit_image(img: Image.Image, size: int, buckets: bool = False) -> Image.Image:
    """Center-crop and resize to size x size, or to the aspect-ratio bucket closest to the image."""
    if buckets:
        ratio = img.width / img.height
        target = min(bucket_sizes(size), key=lambda wh: abs(np.log(wh[0] / wh[1] / ratio)))
    else:
        target = (size, size)
    return ImageOps.fit(img, target, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def list_images(folder: Path) -> list[Path]:
    """Candidate input files of a folder (anything but captions and reports), sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in (".txt", ".json")
    )


def default_min_size(size: int) -> int:
    """The smallest short side accepted for a set of `size` px: half of it (upscaled at most 2x)."""
    return max(1, size // 2)


def prepare_dataset(
    src: str | Path,
    dst: str | Path,
    size: int = 512,
    *,
    min_size: int | None = None,
    buckets: bool = False,
    trigger_word: str = "sks",
    template: str = DEFAULT_TEMPLATE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PrepareReport:
    """Clean every file of `src` into `dst` as NNNN.png + NNNN.txt; reject bad files with a reason.

    Images whose short side is under `min_size` (default: half of `size`) are rejected.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ValueError(f"src: not a folder: {src}")
    if size % 8 or not 64 <= size <= 2048:
        raise ValueError(f"size: must be a multiple of 8 between 64 and 2048 (got {size})")
    if min_size is None:
        min_size = default_min_size(size)
    if min_size < 1:
        raise ValueError(f"min_size: must be at least 1 (got {min_size})")
    dst.mkdir(parents=True, exist_ok=True)
    for old in [*dst.glob(_OUTPUT_GLOB + ".png"), *dst.glob(_OUTPUT_GLOB + ".txt")]:
        old.unlink()
    report = PrepareReport()
    seen: dict[str, Path] = {}
    for path in list_images(src):
        try:
            img = load_image(path, max_pixels=max_pixels, notes=report.notes)
        except ImageRejected as exc:
            report.rejected.append(Rejection(path, str(exc)))
            log.info("rejected %s: %s", path.name, exc)
            continue
        if min(img.size) < min_size:
            report.rejected.append(
                Rejection(path, f"too small: {img.width}x{img.height}, short side under {min_size}")
            )
            continue
        digest = hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()
        if digest in seen:
            report.rejected.append(Rejection(path, f"duplicate of {seen[digest].name}"))
            continue
        seen[digest] = path
        index = len(report.written)
        out = dst / f"{index:04d}.png"
        fit_image(img, size, buckets).save(out, format="PNG")
        out.with_suffix(".txt").write_text(
            caption_for(path, trigger_word, template) + "\n", encoding="utf-8"
        )
        report.written.append(out)
    (dst / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2))
    log.info(
        "prepared %d images in %s, rejected %d", len(report.written), dst, len(report.rejected)
    )
    return report


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


def main(argv: list[str] | None = None) -> int:
    """Command line: prepare a training folder and print one line per rejected file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, type=Path, help="folder of raw images")
    parser.add_argument("--dst", required=True, type=Path, help="output folder")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels")
    parser.add_argument(
        "--min_size", type=int, default=None, help="reject short side below this (default: size/2)"
    )
    parser.add_argument("--buckets", action="store_true", help="keep aspect ratio (buckets)")
    parser.add_argument("--trigger_word", default="sks", help="word used in template captions")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="caption with {trigger}")
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare_dataset(
            args.src,
            args.dst,
            args.size,
            min_size=args.min_size,
            buckets=args.buckets,
            trigger_word=args.trigger_word,
            template=args.template,
            max_pixels=args.max_pixels,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for rejection in report.rejected:
        print(f"rejected {rejection.path.name}: {rejection.reason}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {len(report.written)} images to {args.dst}")
    if not report.written:
        print("error: no usable images", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
