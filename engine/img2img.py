"""Image-to-image and upscaling: the init image, the shared img2img pipeline, the enlargers."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from engine.errors import EngineError
from engine.init_image import MAX_INIT_PIXELS
from engine.metadata import parse_parameters
from engine.requests import GenerationRequest

log = logging.getLogger(__name__)

RESAMPLER = "Lanczos"


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image at exactly width×height: centre-cropped to that shape, then resized (Lanczos)."""
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = (
        min(image.width, round(width / scale)),
        min(image.height, round(height / scale)),
    )
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def open_init_image(path: str | Path) -> Image.Image:
    """Open an untrusted init image as RGB (EXIF-rotated, alpha on white); ValueError if bad."""
    from engine.prepare_dataset import ImageRejected, load_image

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"init_image: no such file: {file}")
    try:
        return load_image(file, max_pixels=MAX_INIT_PIXELS)
    except ImageRejected as exc:
        raise ValueError(f"init_image: {file.name} is unusable: {exc}") from None


def source_parameters(image: Image.Image | str | Path) -> dict[str, Any]:
    """Prompt, negative prompt, seed, sampler, steps and CFG from an image's `parameters` text."""
    if isinstance(image, Image.Image):
        text = image.info.get("parameters")
    else:
        with Image.open(image) as opened:
            text = opened.info.get("parameters")
    if not text:
        return {}
    fields = parse_parameters(str(text))
    found: dict[str, Any] = {
        "prompt": fields["prompt"],
        "negative_prompt": fields["negative_prompt"],
    }
    # A draft's sampler, steps and CFG belong to its few-step LoRA: an upscale is full quality.
    draft = "Draft" in fields or "Fast" in fields
    for key, name, kind in (
        ("Seed", "seed", int),
        ("Sampler", "scheduler", str),
        ("Steps", "num_inference_steps", int),
        ("CFG scale", "guidance_scale", float),
    ):
        if key in fields and not (draft and key != "Seed"):
            try:
                found[name] = kind(fields[key])
            except ValueError:
                log.warning("ignoring unreadable %s %r in the image's parameters", key, fields[key])
    return found


class ModelUpscaler:
    """A Real-ESRGAN-class super-resolution model loaded with spandrel (optional extra)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        file = Path(path).expanduser()
        if not file.is_file() or file.suffix.lower() not in (".pth", ".safetensors"):
            raise EngineError(f"GEN_UPSCALER {str(path)!r} is not a .pth or .safetensors file")
        try:
            from spandrel import ImageModelDescriptor, ModelLoader
        except ImportError:
            raise EngineError(
                'GEN_UPSCALER needs the spandrel library: pip install -e ".[upscale]"'
            ) from None
        model = ModelLoader(device=device).load_from_file(str(file))
        if not isinstance(model, ImageModelDescriptor):
            raise EngineError(f"{file.name} is not an image-to-image (super-resolution) model")
        self.model = model.eval()
        self.name = file.stem
        self.device = device

    def __call__(self, image: Image.Image) -> Image.Image:
        """The image enlarged by the model's own scale."""
        import numpy as np
        import torch

        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            out = self.model(tensor)[0].clamp(0, 1)
        pixels = (out.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype("uint8")
        return Image.fromarray(pixels)


def enlarge(image: Image.Image, size: tuple[int, int], model: ModelUpscaler | None) -> Image.Image:
    """The image at `size`: the model's output resampled to fit, or Lanczos alone."""
    if model is not None:
        image = model(image)
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def img2img_pipeline(pipe: Any) -> Any:
    """An img2img pipeline over the loaded pipeline's own modules (no second copy of weights).

    Built with the constructor rather than ``from_pipe``: ``from_pipe`` ends with
    ``.to(dtype)`` (float32 unless told), which would convert the shared fp16 modules and
    fights offload hooks. The offload bookkeeping is copied so the end-of-call offload
    behaves exactly as in the text-to-image pipeline.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    components = {k: v for k, v in pipe.components.items() if k in _img2img_components()}
    components.setdefault("image_encoder", None)
    new = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    for name in ("_all_hooks", "_offload_device", "_offload_gpu_id"):
        if hasattr(pipe, name):
            setattr(new, name, getattr(pipe, name))
    new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return new


def _img2img_components() -> set[str]:
    import inspect

    from diffusers import StableDiffusionImg2ImgPipeline

    return set(inspect.signature(StableDiffusionImg2ImgPipeline.__init__).parameters) - {"self"}


def upscaler_name(ref: str) -> str:
    """The name written to metadata for a GEN_UPSCALER setting (a file's stem, or Lanczos)."""
    ref = ref.strip()
    return Path(ref).stem if ref else RESAMPLER


def img2img_fields(strength: float, upscale: float | None, upscaler: str) -> dict[str, Any]:
    """The web-UI parameters fields of an img2img or upscale run."""
    if upscale is None:
        return {"Denoising strength": f"{strength:g}"}
    return {
        "Hires upscale": f"{upscale:g}",
        "Hires upscaler": upscaler,
        "Denoising strength": f"{strength:g}",
    }


@contextmanager
def init_path(image: Image.Image | str | Path | None) -> Iterator[str | None]:
    """A file path for an init image: the path itself, or a PIL image written to a temp file."""
    if image is None or isinstance(image, (str, Path)):
        yield None if image is None else str(image)
        return
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"init_image: must be a PIL image or a file path (got {type(image).__name__})"
        )
    with tempfile.TemporaryDirectory(prefix="sd-init-") as folder:
        path = Path(folder) / "init.png"
        image.save(path, format="PNG")
        yield str(path)


def init_pixels(resolved: Any, model: ModelUpscaler | None) -> Image.Image:
    """The source image of a resolved request at its output size (enlarged when upscaling)."""
    image = open_init_image(resolved.init_image)
    size = (resolved.width, resolved.height)
    if resolved.upscale is not None:
        return enlarge(image, size, model)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def parameters_for(image: Image.Image | str | Path, prompt: str | None) -> dict[str, Any]:
    """The source image's PNG parameters (source_parameters) with `prompt` when given.

    ValueError (naming the field) for a missing or unreadable image, or with no prompt either way.
    """
    if isinstance(image, (str, Path)) and not Path(image).is_file():
        raise ValueError(f"init_image: no such file: {image}")
    try:
        found = source_parameters(image)
    except (OSError, SyntaxError, ValueError):
        raise ValueError(f"init_image: {Path(str(image)).name} is not a readable image") from None
    if prompt is None and not found.get("prompt"):
        raise ValueError("prompt: the image has no parameters text to read it from; give a prompt")
    return found if prompt is None else {**found, "prompt": prompt}


def upscale_request(
    image: Image.Image | str | Path,
    factor: float,
    strength: float,
    prompt: str | None,
    seed: int | None,
    negative_prompt: str | None,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    scheduler: str | None,
) -> GenerationRequest:
    """The GenerationRequest of an upscale; unset fields come from the image's parameters."""
    found = parameters_for(image, prompt)
    return GenerationRequest(
        prompt=found["prompt"],
        negative_prompt=(
            negative_prompt if negative_prompt is not None else found.get("negative_prompt")
        ),
        num_inference_steps=num_inference_steps or found.get("num_inference_steps"),
        guidance_scale=guidance_scale
        if guidance_scale is not None
        else found.get("guidance_scale"),
        seed=seed if seed is not None else found.get("seed"),
        scheduler=scheduler or found.get("scheduler"),
        num_images=1,
        strength=strength,
        upscale=factor,
        draft=False,
    )
