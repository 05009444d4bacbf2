"""A simple judge of generated shape images: shape colour, background colour and shape."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.demo.shapes import COLORS, SHAPES, ShapeSpec, random_spec, render

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)
_GRID = 16
FOREGROUND_DISTANCE = 60.0


@dataclass(frozen=True)
class Verdict:
    """What the judge sees in one image."""

    color: str
    background: str
    shape: str | None


def _labels(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each pixel of an (N, 3) array."""
    distances = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def _normalised_mask(mask: np.ndarray) -> np.ndarray | None:
    """Crop a boolean mask to its bounding box and resample it to a fixed grid."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 6:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    small = Image.fromarray(crop).resize((_GRID, _GRID), Image.Resampling.BILINEAR)
    vector = np.asarray(small, dtype=np.float32).ravel() / 255.0
    return vector - vector.mean()


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected component of a boolean mask."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    height, width = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best


class Judge:
    """Nearest-palette colour votes for colours; nearest shape template (from the renderer) for shape."""

    def __init__(self, samples_per_shape: int = 60, seed: int = 0) -> None:
        rng = random.Random(seed)
        templates: list[np.ndarray] = []
        labels: list[int] = []
        for index, shape in enumerate(SHAPES):
            for _ in range(samples_per_shape):
                spec = random_spec(rng, held_out=None)
                spec = ShapeSpec(shape, *spec.key[1:], dx=spec.dx, dy=spec.dy)
                vector = self._shape_vector(np.asarray(render(spec), dtype=np.float32))[1]
                if vector is not None:
                    templates.append(vector)
                    labels.append(index)
        self._templates = np.stack(templates)
        self._template_labels = np.array(labels)

    @staticmethod
    def _shape_vector(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Background label, normalised foreground mask and the foreground mask of an image."""
        pixels = array.reshape(-1, 3)
        labels = _labels(pixels)
        background = np.bincount(labels, minlength=len(_NAMES)).argmax()
        distance = np.sqrt(((pixels - _PALETTE[background]) ** 2).sum(-1))
        mask = (distance > FOREGROUND_DISTANCE).reshape(array.shape[:2])
        if mask.any():
            mask = _largest_component(mask)
        return np.array(background), _normalised_mask(mask), mask

    def __call__(self, image: Image.Image) -> Verdict:
        """Judge one image."""
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
        background, vector, mask = self._shape_vector(array)
        background_name = _NAMES[int(background)]
        if not mask.any():
            return Verdict(color=background_name, background=background_name, shape=None)
        votes = np.bincount(_labels(array[mask]), minlength=len(_NAMES))
        votes[int(background)] = 0
        color = _NAMES[int(votes.argmax())] if votes.any() else background_name
        shape = None
        if vector is not None:
            distances = ((self._templates - vector[None, :]) ** 2).sum(-1)
            nearest = self._template_labels[np.argsort(distances)[:5]]
            shape = SHAPES[int(np.bincount(nearest, minlength=len(SHAPES)).argmax())]
        return Verdict(color=color, background=background_name, shape=shape)


def score(verdicts: list[Verdict], specs: list[ShapeSpec]) -> dict[str, float]:
    """Fractions of images whose shape colour, background colour and shape match their specs."""
    n = max(len(specs), 1)
    return {
        "color": sum(v.color == s.color for v, s in zip(verdicts, specs, strict=True)) / n,
        "background": sum(
            v.background == s.background for v, s in zip(verdicts, specs, strict=True)
        )
        / n,
        "shape": sum(v.shape == s.shape for v, s in zip(verdicts, specs, strict=True)) / n,
    }


def self_check(count: int = 200, seed: int = 99) -> dict[str, float]:
    """The judge's own accuracy on freshly rendered ground-truth images."""
    judge = Judge()
    rng = random.Random(seed)
    specs = [random_spec(rng, held_out=None) for _ in range(count)]
    return score([judge(render(spec)) for spec in specs], specs)


def block_shifts(image: Image.Image, source: Image.Image, block: int = 16) -> np.ndarray:
    """Per block of `block` px, how far its mean colour moved from the Lanczos-enlarged source.

    The figure is the largest of the three channels' differences, 0-255.
    """
    reference = np.asarray(
        source.convert("RGB").resize(image.size, Image.Resampling.LANCZOS), dtype=np.float32
    )
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    rows, cols = array.shape[0] // block, array.shape[1] // block

    def means(pixels: np.ndarray) -> np.ndarray:
        cropped = pixels[: rows * block, : cols * block]
        return cropped.reshape(rows, block, cols, block, 3).mean(axis=(1, 3))

    return np.abs(means(array) - means(reference)).max(axis=-1)


def region_colours(image: Image.Image, region: np.ndarray | None = None) -> dict[str, float]:
    """The fraction of the region's pixels nearest each palette colour (all pixels if None)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = array.reshape(-1, 3) if region is None else array[region]
    counts = np.bincount(_labels(pixels.reshape(-1, 3)), minlength=len(_NAMES))
    return {
        name: float(c) / max(1, int(counts.sum())) for name, c in zip(_NAMES, counts, strict=True)
    }


def main_colour(image: Image.Image, region: np.ndarray | None = None) -> str:
    """The palette colour most of the region's pixels are nearest to."""
    colours = region_colours(image, region)
    return max(colours, key=colours.__getitem__)
