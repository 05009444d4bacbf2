"""The web UI's read and control endpoints: progress, options, models, samplers, LoRAs, PNG info.

This module registers them all (webapi/progress.py, options.py and catalog.py hold most) and
answers the server-level ones itself: /png-info, /memory and /cmd-flags.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from engine.metadata import parse_parameters
from webapi import catalog, options, progress
from webapi.context import context_of
from webapi.errors import invalid, json_object
from webapi.payloads import Invalid, decode_image
from webapi.settings import is_loopback

log = logging.getLogger(__name__)

# Image.open reads the header only; decoding is not needed to read the text chunks.
MAX_IMAGE_PIXELS = 8192 * 8192


def decode_image_field(value: Any, field: str = "image") -> Image.Image:
    """A base64 (or data: URL) image from a request field; 422 naming ``field`` when it is not."""
    try:
        data = decode_image(value, field)
    except Invalid as exc:
        raise invalid(exc.field, exc.message) from None
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise invalid(field, "is not an image (PNG, JPEG or WebP)") from None
    except ValueError:  # e.g. a PNG text chunk that inflates past Pillow's limit
        raise invalid(field, "has a text chunk too large to read") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise invalid(field, f"is larger than {MAX_IMAGE_PIXELS} pixels")
    return image


def web_ui_parameters(text: str) -> dict[str, Any]:
    """A parameters text parsed with the web UI's key names (Prompt, Steps, Size-1, ...)."""
    if not text.strip():
        return {}
    parsed = parse_parameters(text)
    fields = {
        key: value for key, value in parsed.items() if key not in ("prompt", "negative_prompt")
    }
    result: dict[str, Any] = {
        "Prompt": parsed["prompt"],
        "Negative prompt": parsed["negative_prompt"],
        **fields,
    }
    width, sep, height = str(fields.get("Size", "")).partition("x")
    if sep and width.isdigit() and height.isdigit():
        result["Size-1"], result["Size-2"] = width, height
    return result


async def png_info(request: web.Request) -> web.Response:
    """POST /sdapi/v1/png-info: the parameters text of a PNG, raw and parsed."""
    body = await json_object(request)
    with decode_image_field(body.get("image")) as image:
        chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    text = chunks.pop("parameters", "")
    return web.json_response({"info": text, "items": chunks, "parameters": web_ui_parameters(text)})


def _ram() -> dict[str, Any]:
    try:
        import psutil

        system = psutil.virtual_memory()
        used = psutil.Process(os.getpid()).memory_info().rss
        return {"free": system.available, "used": used, "total": system.total}
    except Exception as exc:  # the web UI reports a failure in the field too
        return {"error": str(exc)}


def _cuda() -> dict[str, Any]:
    torch = sys.modules.get("torch")  # the engine imported it; never import it just for this
    if torch is None or not torch.cuda.is_available():
        return {"error": "unavailable (no CUDA device; the engine runs on the CPU)"}
    try:
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()

        def pair(key: str) -> dict[str, int]:
            return {
                "current": int(stats.get(f"{key}.all.current", 0)),
                "peak": int(stats.get(f"{key}.all.peak", 0)),
            }

        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {
                "retries": int(stats.get("num_alloc_retries", 0)),
                "oom": int(stats.get("num_ooms", 0)),
            },
        }
    except Exception as exc:
        return {"error": str(exc)}


async def memory(request: web.Request) -> web.Response:
    """GET /sdapi/v1/memory: this process's RAM, and the GPU's memory (an error on a CPU)."""
    return web.json_response({"ram": _ram(), "cuda": _cuda()})


async def cmd_flags(request: web.Request) -> web.Response:
    """GET /sdapi/v1/cmd-flags: this server's settings under the web UI's flag names (no secrets)."""
    context = context_of(request)
    settings, config, door = context.settings, context.config, context.door
    preset = door.preset
    return web.json_response(
        {
            "api": True,
            "nowebui": True,
            "listen": not is_loopback(settings.host),
            "server_name": settings.host,
            "port": settings.port,
            "api_auth": "***" if settings.credentials() else None,  # never the credentials
            "ckpt": config.model.model_id,
            "lora_dir": str(config.generation.lora_dir),
            "device": door.device,
            "use_cpu": ["all"] if door.device == "cpu" else [],
            "skip_torch_cuda_test": door.device == "cpu",
            "precision": config.model.precision,
            "no_half": config.model.precision == "fp32",
            "lowvram": preset in ("2gb", "3gb"),
            "medvram": preset == "4gb",
            "vram_preset": preset,
            "model_choices": door.model_names(),
        }
    )


async def ping(request: web.Request) -> web.Response:
    """GET /internal/ping: the web UI's liveness check (clients probe it before connecting)."""
    return web.json_response({})


def add_routes(app: web.Application) -> None:
    """Register the information and control endpoints."""
    progress.add_routes(app)
    options.add_routes(app)
    catalog.add_routes(app)
    app.router.add_post("/sdapi/v1/png-info", png_info)
    app.router.add_get("/sdapi/v1/memory", memory)
    app.router.add_get("/sdapi/v1/cmd-flags", cmd_flags)
    app.router.add_get("/internal/ping", ping)
