"""/train's images on disk: download the accepted uploads, prepare the dataset, read its captions."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from cogs._attachments import read_attachment, shown_name
from cogs._checks import UserFacingError
from cogs._uploads import Upload, with_reasons
from engine.prepare_dataset import prepare_dataset
from engine.training.config import TrainConfig


async def stage_dataset(
    uploads: list[Upload],
    captions: list[str | None],
    folder: Path,
    config: TrainConfig,
    *,
    max_mb: float,
    min_images: int,
    left_out: list[str],
) -> tuple[list[str], list[str]]:
    """Download into folder/raw, prepare folder/dataset; refuse too few usable images.

    ``left_out``: the reasons for attachments refused before the download (check_uploads); the
    count and the reasons of a refusal cover every attachment. Returns the reasons for all images
    left out and the captions of the images used.
    """
    raw = folder / "raw"
    shutil.rmtree(folder, ignore_errors=True)  # leftovers of an earlier attempt at this name
    await asyncio.to_thread(raw.mkdir, parents=True, exist_ok=True)
    originals: dict[str, str] = {}
    for index, upload in enumerate(uploads):
        stored = f"{index:03d}{upload.suffix}"
        originals[stored] = upload.attachment.filename
        data = await read_attachment(upload.attachment, max_mb)
        await asyncio.to_thread((raw / stored).write_bytes, data)
        if captions[index]:  # the alt text, as the sidecar caption prepare_dataset reads
            sidecar = (raw / stored).with_suffix(".txt")
            await asyncio.to_thread(sidecar.write_text, captions[index], encoding="utf-8")
    size = config.resolution
    report = await asyncio.to_thread(
        prepare_dataset,
        raw,
        config.dataset_dir,
        size,
        min_size=max(64, size // 2),
        trigger_word=config.trigger_word,
        template=config.caption_template,
    )
    reasons = left_out + [
        f"{shown_name(originals.get(r.path.name, r.path.name))}: {r.reason}"
        for r in report.rejected
    ]
    if len(report.written) < min_images:
        attached = len(uploads) + len(left_out)
        head = (
            f"Training needs at least {min_images} usable images; "
            f"only {len(report.written)} of the {attached} files attached could be used."
        )
        raise UserFacingError(with_reasons(head, reasons))
    used = await asyncio.to_thread(_read_captions, report.written)
    return reasons, used


def _read_captions(images: list[Path]) -> list[str]:
    """The caption written next to each prepared image."""
    return [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in images]
