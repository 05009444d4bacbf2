"""Inpaint and outpaint: masks, the soft edge, the outpaint canvas, paste-back, the pipeline.

A region job repaints the white part of a mask over its init image with diffusers'
StableDiffusionInpaintPipeline built on the resident components (no second copy of weights).
A normal 4-channel UNet keeps the unmasked latents of the source at every step; a 9-channel
inpainting UNet (``unet.config.in_channels == 9``) is given the mask and the masked picture.
Afterwards the result is pasted back through the soft mask: beyond `mask_blur` px from the
mask the pixels are the source's own, not a VAE round trip of them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from engine.img2img import open_init_image, parameters_for
from engine.region import (
    GRID,
    PRESETS,
    Layout,
    is_region_job,
    outpaint_layout,
    pan_extension,
    parse_outpaint,
    parse_region,
)
from engine.requests import GenerationRequest

INPAINT_CHANNELS = 9  # latents 4 + mask 1 + masked-image latents 4


def grid_mask(width: int, height: int, cells: Iterable[int]) -> Image.Image:
    """A width×height mask, white over the given cells (0-8, row by row from the top left)."""
    mask = Image.new("L", (width, height), 0)
    for cell in cells:
        if not 0 <= int(cell) < GRID * GRID:
            raise ValueError(f"mask_region: cell {cell} is not one of 0-{GRID * GRID - 1}")
        row, col = divmod(int(cell), GRID)
        box = (
            round(col * width / GRID),
            round(row * height / GRID),
            round((col + 1) * width / GRID),
            round((row + 1) * height / GRID),
        )
        mask.paste(255, box)
    return mask


def preset_mask(width: int, height: int, name: str) -> Image.Image:
    """A width×height mask of a named region (engine.region.PRESETS: "left half", "centre", …)."""
    left, top, right, bottom = PRESETS[name]
    mask = Image.new("L", (width, height), 0)
    mask.paste(
        255,
        (round(left * width), round(top * height), round(right * width), round(bottom * height)),
    )
    return mask


def region_mask(width: int, height: int, region: str) -> Image.Image:
    """The mask of a mask_region value: grid cells ("0,1,2") or a preset name."""
    found = parse_region(region)
    if found is None:
        raise ValueError(f"mask_region: not a region: {region!r}")
    name, cells = found
    return preset_mask(width, height, name) if name else grid_mask(width, height, cells)


def load_mask(path: str | Path, size: tuple[int, int]) -> Image.Image:
    """A mask file as grayscale at `size` (transparent counts as black, kept)."""
    from engine.region import _on_black

    with Image.open(path) as opened:
        gray = _on_black(opened)
    return gray if gray.size == size else gray.resize(size, Image.Resampling.BILINEAR)


def soft_mask(mask: Image.Image, blur: int) -> Image.Image:
    """The mask with a soft edge fading out over `blur` px beyond it.

    The white part stays fully white (repainted whole); pixels further than `blur` px from any
    white pixel stay exactly 0 (the original's own). The edge is grown by half the blur, then
    softened by two box blurs (a tent) reaching the other half.
    """
    if blur <= 0:
        return mask
    grow = (blur + 1) // 2
    soft = mask.filter(ImageFilter.MaxFilter(2 * grow + 1))
    tent = blur - grow
    for radius in (tent // 2, tent - tent // 2):
        if radius:
            soft = soft.filter(ImageFilter.BoxBlur(radius))
    return ImageChops.lighter(soft, mask)


def latent_cover(mask: Image.Image, scale: int) -> Image.Image:
    """The mask grown to whole latent cells: a cell with any masked pixel is repainted whole.

    The pipeline shrinks the mask to latent size; without this a thin stroke could vanish.
    """
    hard = np.asarray(mask, dtype=np.uint8) >= 128
    h, w = hard.shape
    rows, cols = -(-h // scale), -(-w // scale)
    padded = np.zeros((rows * scale, cols * scale), dtype=bool)
    padded[:h, :w] = hard
    cells = padded.reshape(rows, scale, cols, scale).any(axis=(1, 3))
    full = np.repeat(np.repeat(cells, scale, axis=0), scale, axis=1)[:h, :w]
    return Image.fromarray(full.astype(np.uint8) * 255)


def paste_back(original: Image.Image, generated: Image.Image, soft: Image.Image) -> Image.Image:
    """The generated picture inside the soft mask, the original outside it, blended between."""
    alpha = np.asarray(soft, dtype=np.float32)[..., None] / 255.0
    old = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB").resize(original.size), dtype=np.float32)
    mixed = old * (1.0 - alpha) + new * alpha
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


def outpaint_canvas(
    image: Image.Image, outpaint: str, overlap: int
) -> tuple[Image.Image, Image.Image, Layout]:
    """The outpaint's canvas (new area filled from the edges, blurred) and its mask.

    The mask covers the new area and `overlap` px of the old picture along the seams.
    """
    kind, _ = parse_outpaint(outpaint)
    layout = outpaint_layout(*image.size, outpaint)
    left, top, right, bottom = layout.box
    inner = image.convert("RGB")
    if kind == "zoom":
        inner = inner.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    width, height = layout.canvas
    pads = ((top, height - bottom), (left, width - right), (0, 0))
    stretched = np.pad(np.asarray(inner), pads, mode="edge")
    canvas = Image.fromarray(stretched)
    radius = max(2.0, max(width - (right - left), height - (bottom - top)) / 6)
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius))
    old = Image.new("L", layout.canvas, 0)
    old.paste(255, layout.box)
    filled = Image.composite(canvas, blurred, old)
    kept = (
        left + overlap * (left > 0),
        top + overlap * (top > 0),
        right - overlap * (right < width),
        bottom - overlap * (bottom < height),
    )
    mask = Image.new("L", layout.canvas, 255)
    if kept[0] < kept[2] and kept[1] < kept[3]:
        mask.paste(0, kept)
    return filled, mask, layout


@dataclass
class RegionJob:
    """One region job's pictures: the canvas the model starts from, its mask and soft mask.

    `window` (left, top, right, bottom) is the part of the canvas the model paints; None: all.
    """

    canvas: Image.Image
    mask: Image.Image
    soft: Image.Image
    window: tuple[int, int, int, int] | None = None

    def pipeline_arguments(self, scale: int) -> dict[str, Any]:
        """The inpaint pipeline's image, mask and size arguments."""
        box = self.window or (0, 0, *self.canvas.size)
        return {
            "image": self.canvas.crop(box),
            "mask_image": latent_cover(self.mask.crop(box), scale),
            "width": box[2] - box[0],
            "height": box[3] - box[1],
        }

    def paste(self, images: list[Image.Image]) -> list[Image.Image]:
        """Each generated image pasted back into the canvas through the soft mask."""
        box = self.window or (0, 0, *self.canvas.size)
        pasted = []
        for image in images:
            full = self.canvas.copy()
            full.paste(image.convert("RGB").resize((box[2] - box[0], box[3] - box[1])), box[:2])
            pasted.append(paste_back(self.canvas, full, self.soft))
        return pasted


def region_job(resolved: Any, pipe: Any = None) -> RegionJob | None:
    """The canvas and masks of a resolved request; None unless it is a region job.

    On a 9-channel inpainting UNet every request is one (it cannot run without a mask): plain
    text-to-image and img2img repaint the whole picture.

    A pan paints a window of the picture's own size over the new strip (half of it old
    picture, as context): the model works at the size it made the picture at, and a pan costs
    what that picture cost.
    """
    size = (resolved.width, resolved.height)
    if not is_region_job(resolved):
        if pipe is None or not is_inpainting_unet(pipe):
            return None
        if resolved.init_image is None:
            canvas = Image.new("RGB", size, (127, 127, 127))
        else:
            canvas = _fit(open_init_image(resolved.init_image), size)
        whole = Image.new("L", size, 255)
        return RegionJob(canvas=canvas, mask=whole, soft=whole)
    source = open_init_image(resolved.init_image)
    blur = int(resolved.mask_blur or 0)
    window = None
    if resolved.outpaint:
        kind, side = parse_outpaint(resolved.outpaint)
        # A pan's picture keeps its working size; the canvas (the output size) grows around it.
        inner = _pan_source_size(size, resolved.outpaint) if kind == "pan" else size
        source = _fit(source, inner)
        canvas, mask, _ = outpaint_canvas(source, resolved.outpaint, overlap=blur)
        if kind == "pan":
            left = size[0] - inner[0] if side == "right" else 0
            top = size[1] - inner[1] if side == "down" else 0
            window = (left, top, left + inner[0], top + inner[1])
    else:
        canvas = _fit(source, size)
        if resolved.mask_image:
            mask = load_mask(resolved.mask_image, size)
        else:
            mask = region_mask(*size, resolved.mask_region)
    return RegionJob(canvas=canvas, mask=mask, soft=soft_mask(mask, blur), window=window)


def _pan_source_size(canvas: tuple[int, int], outpaint: str) -> tuple[int, int]:
    """The picture's size inside a pan's canvas (pan_extension undone)."""
    _, side = parse_outpaint(outpaint)
    width, height = canvas
    grows_x = side in ("left", "right")
    total = width if grows_x else height
    for inner in range(total, 63, -8):
        if inner + pan_extension(inner) == total:
            return (inner, height) if grows_x else (width, inner)
    raise ValueError(f"outpaint: {width}x{height} is not the canvas of a {outpaint}")


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def is_inpainting_unet(pipe: Any) -> bool:
    """Whether the loaded UNet is a 9-channel inpainting UNet."""
    return int(getattr(pipe.unet.config, "in_channels", 4)) == INPAINT_CHANNELS


def inpaint_pipeline(pipe: Any) -> Any:
    """An inpaint pipeline over the loaded pipeline's own modules (as img2img_pipeline does)."""
    import inspect

    from diffusers import StableDiffusionInpaintPipeline

    wanted = set(inspect.signature(StableDiffusionInpaintPipeline.__init__).parameters)
    components = {k: v for k, v in pipe.components.items() if k in wanted}
    components.setdefault("image_encoder", None)
    new = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
    for name in ("_all_hooks", "_offload_device", "_offload_gpu_id"):
        if hasattr(pipe, name):
            setattr(new, name, getattr(pipe, name))
    new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return new


def region_fields(resolved: Any) -> dict[str, Any]:
    """The web-UI parameters fields of a region job ({} for any other request)."""
    if not is_region_job(resolved):
        return {}
    fields: dict[str, Any] = {
        "Mask blur": int(resolved.mask_blur or 0),
        "Inpaint area": "Whole picture",
        "Masked content": "fill" if resolved.outpaint else "original",
        "Denoising strength": f"{resolved.strength:g}",
    }
    if resolved.mask_region:
        fields["Mask region"] = resolved.mask_region
    if resolved.outpaint:
        fields["Outpaint"] = resolved.outpaint
    return fields


def region_request(
    image: Image.Image | str | Path,
    prompt: str | None = None,
    **fields: Any,
) -> GenerationRequest:
    """The GenerationRequest of an inpaint or outpaint of `image` (init_image left to the caller).

    Fields left None (prompt, negative prompt, sampler, seed, steps, CFG) come from the image's
    PNG parameters text; ValueError when there is no prompt either way.
    """
    found = parameters_for(image, prompt)
    request = GenerationRequest(prompt=found["prompt"])
    for name in ("negative_prompt", "seed", "scheduler", "num_inference_steps", "guidance_scale"):
        setattr(request, name, found.get(name))
    for name, value in fields.items():
        if value is not None:
            setattr(request, name, value)
    request.num_images = request.num_images or 1
    return request


@contextmanager
def image_path(value: Any, field: str) -> Iterator[str | None]:
    """A file path for a picture argument: a path as given, or a PIL image written to a temp PNG."""
    if value is None or isinstance(value, (str, Path)):
        yield None if value is None else str(value)
        return
    if not isinstance(value, Image.Image):
        raise ValueError(
            f"{field}: must be a PIL image or a file path (got {type(value).__name__})"
        )
    with tempfile.TemporaryDirectory(prefix="sd-region-") as folder:
        path = Path(folder) / f"{field}.png"
        value.save(path, format="PNG")
        yield str(path)


def mask_arguments(mask: Any) -> tuple[Any, str | None]:
    """(mask image or path, mask_region) of the API's `mask`: a picture, a path, cells or a preset."""
    if isinstance(mask, Image.Image | Path):
        return mask, None
    if isinstance(mask, str):
        looks_like_file = Path(mask).suffix != "" or Path(mask).exists() or "/" in mask
        return (mask, None) if looks_like_file else (None, mask)
    if isinstance(mask, Iterable):
        return None, ",".join(str(int(c)) for c in sorted(set(mask)))
    raise ValueError(
        f"mask_image: must be a PIL image, a path, grid cells or a region name (got {mask!r})"
    )


def run_inpaint(
    run: Any,
    image: Any,
    mask: Any,
    prompt: str | None,
    progress: Any,
    cancel: Any,
    fields: dict[str, Any],
) -> Image.Image:
    """Repaint the white part of `mask` in `image` (PIL or path) with `run`; the new image.

    `mask`: a PIL image or file (white = repaint, any size), 3x3 grid cells such as {0, 3, 6},
    or a preset name ("left half", "centre"). Without `prompt` the prompt, negative prompt,
    sampler and seed come from the image's PNG parameters. `fields`: other GenerationRequest
    fields (strength, mask_blur, seed, num_inference_steps, ...).
    """
    picture, region = mask_arguments(mask)
    request = region_request(image, prompt, mask_region=region, **fields)
    with image_path(image, "init_image") as path, image_path(picture, "mask_image") as mask_path:
        request.init_image, request.mask_image = path, mask_path
        return run(request, progress=progress, cancel=cancel).images[0]


def run_outpaint(
    run: Any,
    image: Any,
    zoom: float | None,
    pan: str | None,
    prompt: str | None,
    progress: Any,
    cancel: Any,
    fields: dict[str, Any],
) -> Image.Image:
    """Zoom out (1.5 or 2: same size, the picture shrunk in the centre) or pan (left, right, up,
    down: half a side more) and paint the new area with `run`; the new image.

    Without `prompt` the prompt, negative prompt, sampler and seed come from the image's PNG
    parameters. `fields`: other GenerationRequest fields (strength, mask_blur, seed, ...).
    """
    if (zoom is None) == (pan is None):
        raise ValueError("outpaint: give either zoom (1.5 or 2) or pan (left, right, up, down)")
    how = f"zoom:{zoom:g}" if zoom is not None else f"pan:{pan}"
    request = region_request(image, prompt, outpaint=how, **fields)
    with image_path(image, "init_image") as path:
        request.init_image = path
        return run(request, progress=progress, cancel=cancel).images[0]
