"""Training examples: images and captions read from a dataset folder, as tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.prepare_dataset import (
    IMAGE_SUFFIXES,
    ImageRejected,
    caption_for,
    fit_image,
    list_images,
    load_image,
)

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One training image as a [-1, 1] CHW tensor, with its caption."""

    path: Path
    pixels: torch.Tensor
    caption: str


def load_examples(
    folder: Path,
    resolution: int,
    *,
    buckets: bool,
    trigger_word: str,
    template: str,
) -> list[Example]:
    """Read every usable image of `folder`; unusable files are logged and skipped."""
    if not folder.is_dir():
        raise ValueError(f"dataset_dir: not a folder: {folder}")
    examples: list[Example] = []
    for path in list_images(folder):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            img = load_image(path)
        except ImageRejected as exc:
            log.warning("skipping %s: %s", path.name, exc)
            continue
        fitted = fit_image(img, resolution, buckets)
        arr = np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        examples.append(Example(path, pixels, caption_for(path, trigger_word, template)))
    if not examples:
        raise ValueError(f"dataset_dir: no usable images in {folder}")
    return examples


def group_by_shape(shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Indices of examples grouped by tensor shape (aspect-ratio buckets), in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(index)
    return list(groups.values())


def pick_batch(groups: list[list[int]], batch_size: int, generator: torch.Generator) -> list[int]:
    """A batch of indices from one shape group; groups are chosen in proportion to their size."""
    sizes = torch.tensor([len(g) for g in groups], dtype=torch.float64)
    group = groups[int(torch.multinomial(sizes, 1, generator=generator))]
    picks = torch.randint(len(group), (batch_size,), generator=generator)
    return [group[int(i)] for i in picks]
