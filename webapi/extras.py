"""POST /sdapi/v1/extra-single-image: enlarge one picture with Lanczos or the GEN_UPSCALER model.

Lanczos runs in a thread of the web server; the model runs on the engine's thread between two
jobs (the pipeline's device is the engine's alone), so it delays the next job by its own time.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from aiohttp import web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.img2img import RESAMPLER, upscaler_name
from webapi.context import context_of
from webapi.errors import invalid, json_object
from webapi.info import decode_image_field

MAX_SIDE = 4096  # the largest side an enlarged picture may have, in pixels
NONE = "None"


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid(name, f"must be a number from {low:g} to {high:g} (got {value!r})")
    return float(value)


def target_size(body: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """The enlarged size: by ``upscaling_resize`` (resize_mode 0) or to _w × _h (mode 1)."""
    mode = body.get("resize_mode", 0)
    if mode not in (0, 1):
        raise invalid("resize_mode", f"must be 0 (scale by) or 1 (scale to) (got {mode!r})")
    if mode == 1:
        width = int(_number(body, "upscaling_resize_w", 512, 1, MAX_SIDE))
        height = int(_number(body, "upscaling_resize_h", 512, 1, MAX_SIDE))
        return width, height
    scale = _number(body, "upscaling_resize", 2, 1, 8)
    width, height = round(size[0] * scale), round(size[1] * scale)
    if max(width, height) > MAX_SIDE:
        raise invalid(
            "upscaling_resize",
            f"{size[0]}x{size[1]} enlarged {scale:g}x is {width}x{height}; "
            f"the largest side allowed is {MAX_SIDE} px",
        )
    return width, height


def upscaler_choice(body: dict[str, Any], model_ref: str) -> str:
    """The upscaler named by ``upscaler_1``: None, Lanczos or the GEN_UPSCALER model's name."""
    wanted = body.get("upscaler_1") or NONE  # null or "" as the web UI's "None"
    names = [NONE, RESAMPLER] + ([upscaler_name(model_ref)] if model_ref else [])
    for name in names:
        if isinstance(wanted, str) and wanted.strip().lower() == name.lower():
            return name
    raise invalid("upscaler_1", f"unknown upscaler {wanted!r}; choose one of: {', '.join(names)}")


def png_base64(image: Image.Image, parameters: str | None) -> str:
    """The picture as a base64 PNG, keeping the source's parameters text."""
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def extra_single_image(request: web.Request) -> web.Response:
    """POST /sdapi/v1/extra-single-image: {"image": base64 PNG, "html_info": a line on what ran}."""
    context = context_of(request)
    body = await json_object(request)
    model_ref = context.config.generation.upscaler.strip()
    upscaler = upscaler_choice(body, model_ref)
    with decode_image_field(body.get("image")) as opened:
        parameters = opened.info.get("parameters")
        try:
            source = opened.convert("RGB")  # decodes: a truncated or corrupt file fails here
        except (OSError, SyntaxError, ValueError):
            raise invalid("image", "is not a readable image (truncated or corrupt)") from None
    size = target_size(body, source.size)
    if upscaler == NONE or size == source.size:
        result, note = source, "not enlarged (upscaler None)"
    elif upscaler == RESAMPLER:
        result = await asyncio.to_thread(source.resize, size, Image.Resampling.LANCZOS)
        note = f"enlarged to {size[0]}x{size[1]} with {RESAMPLER}"
    else:
        result = await context.door.enlarge(source, size)
        note = f"enlarged to {size[0]}x{size[1]} with {upscaler}"
    text = parameters if isinstance(parameters, str) else None
    encoded = await asyncio.to_thread(png_base64, result, text)
    return web.json_response({"html_info": f"<p>{note}</p>", "image": encoded})


def add_routes(app: web.Application) -> None:
    """Register the upscale endpoint."""
    app.router.add_post("/sdapi/v1/extra-single-image", extra_single_image)
