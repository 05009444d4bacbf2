"""Web-UI request bodies as this engine's GenerationRequest fields (unknown fields are ignored).

Fields a client leaves out take this server's GEN_ defaults (not the web UI's 512×512 and 50
steps), so a 2 GB card gets what it was set up for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field, replace
from typing import Any

from engine.config import check_size
from engine.errors import RequestError
from engine.init_image import UPSCALE_STRENGTH, check_strength, upscaled_size
from engine.requests import MAX_SEED, GenerationRequest, random_seed
from storage.lora_tags import prompt_lora_entries
from storage.loras import LoraRecord
from storage.sources import ImageRefused, store_mask, store_source
from webapi.catalog import sampler_for
from webapi.context import ApiContext, ApiUser
from webapi.options import caller_model, find_checkpoint

CHECKPOINT = "override_settings.sd_model_checkpoint"
# GenerationRequest field -> the web-UI field a client sent it as (422 names the client's field).
API_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "num_images": "batch_size",
    "scheduler": "sampler_name",
    "init_image": "init_images",
    "strength": "denoising_strength",
    "upscale": "hr_scale",
    "model": CHECKPOINT,
    "loras": "prompt",
    "mask_image": "mask",
    "mask_blur": "mask_blur",
    "draft": "draft",
}
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
MAX_N_ITER = 16
MAX_HIRES_SIDE = 8192  # hr_resize_x/y beyond this are refused before the size check


class Invalid(ValueError):
    """A bad request field, named as the client sent it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def api_field_error(exc: ValueError) -> Invalid:
    """The engine's ValueError ("field: detail") under the web-UI name of that field."""
    if isinstance(exc, Invalid):
        return exc
    error = RequestError.from_value_error(exc)
    return Invalid(API_FIELDS.get(error.field, error.field or "body"), error.detail)


@dataclass(frozen=True)
class HiresPass:
    """The web UI's hires fix: each image enlarged by `scale` and repainted (the U button)."""

    scale: float
    strength: float
    steps: int | None
    # hr_resize_x / hr_resize_y (0: not given): the scale then follows from the first pass's size
    resize: tuple[int, int] = (0, 0)


@dataclass
class ApiRequest:
    """One txt2img/img2img call: n_iter jobs of batch_size images, maybe each upscaled after."""

    request: dict[str, Any]  # the first job's GenerationRequest fields (seed included)
    batch_size: int
    n_iter: int
    hires: HiresPass | None = None
    send_images: bool = True
    save_images: bool = False
    received: dict[str, Any] = field(default_factory=dict)

    def job_request(self, k: int) -> GenerationRequest:
        """The request of iteration k: seeds follow on from the previous iteration's."""
        seed = (int(self.request["seed"]) + k * self.batch_size) % (MAX_SEED + 1)
        return GenerationRequest.from_dict({**self.request, "seed": seed})

    def hires_request(self, decided: dict[str, Any], path: str, seed: int) -> GenerationRequest:
        """The hires pass of one image: the decided first pass, enlarged from its saved PNG."""
        assert self.hires is not None
        steps = self.hires.steps or decided.get("num_inference_steps")
        return GenerationRequest.from_dict(
            {
                **decided,
                "init_image": path,
                "upscale": self.hires.scale,
                "strength": self.hires.strength,
                "num_images": 1,
                "width": None,
                "height": None,
                "seed": seed,
                "num_inference_steps": steps,
                **{name: None for name in ("mask_image", "mask_region", "mask_blur", "outpaint")},
            }
        )


def sampler_name(sampler: Any, scheduler: Any) -> str | None:
    """The engine's sampler for a web-UI sampler_name + scheduler ("DPM++ 2M" + "Karras")."""
    if sampler is not None and not isinstance(sampler, str):
        raise Invalid("sampler_name", f"must be a name (got {sampler!r})")
    if scheduler is not None and not isinstance(scheduler, str):
        raise Invalid("scheduler", f"must be a name (got {scheduler!r})")
    try:
        return sampler_for(sampler, scheduler)
    except ValueError as exc:  # "field: message"
        field_name, _, message = str(exc).partition(": ")
        raise Invalid(field_name, message) from None


def whole(value: Any) -> Any:
    """A JSON number that is whole (20.0 too, as some clients send) as an int; else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = whole(body.get(name, default))
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(name, f"must be a whole number from {low} to {high} (got {value!r})")
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def flag(body: dict[str, Any], name: str, default: bool) -> bool:
    """A yes/no field: a JSON bool, 0/1, or "true"/"false" as form-minded clients send it."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise Invalid(name, f"must be true or false (got {value!r})")


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(name, f"must be a number (got {value!r})")
    return float(value)


def decode_image(text: Any, field_name: str) -> bytes:
    """The bytes of a base64 image (a data: URL prefix is allowed); Invalid when unreadable."""
    if not isinstance(text, str) or not text.strip():
        raise Invalid(field_name, "must be a base64-encoded image")
    # Whitespace is dropped (clients that wrap lines at 76 characters) and lost padding restored.
    encoded = "".join(_DATA_URL.sub("", text.strip()).split())
    encoded += "=" * (-len(encoded) % 4)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(field_name, "is not valid base64") from None
    if not data:
        raise Invalid(field_name, "is empty")
    return data


def checkpoint(ctx: ApiContext, title: Any) -> str:
    """The MODEL_CHOICES name of a web-UI checkpoint title ("name.safetensors [hash]" too)."""
    if not isinstance(title, str) or not title.strip():
        raise Invalid(CHECKPOINT, f"must be a model name (got {title!r})")
    found = find_checkpoint(ctx, title)
    if found is None:
        names = ", ".join(ctx.door.model_names())
        raise Invalid(CHECKPOINT, f"unknown model {title!r}; choose one of: {names}")
    return found


async def request_model(ctx: ApiContext, user: ApiUser, body: dict[str, Any]) -> str | None:
    """The model a call runs on: its override, the caller's /options choice, else the loaded one."""
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise Invalid("override_settings", "must be an object")
    if overrides.get("sd_model_checkpoint") is not None:
        return checkpoint(ctx, overrides["sd_model_checkpoint"])
    return await caller_model(ctx, user)  # None: the model loaded when the job is queued


def _lora_fits(ctx: ApiContext, model: str | None):
    """A check that refuses a LoRA made for another architecture than `model`."""
    door = ctx.door

    def check(record: LoraRecord) -> None:
        width = record.base_width
        if not width and record.base_model and door.find_model(record.base_model):
            width = door.model_width(record.base_model)
        wanted = door.model_width(model) if model else door.resident_width
        if width and wanted and width != wanted:
            raise RequestError("loras", f"LoRA {record.name!r} was made for another base model")

    return check


async def parse_request(
    ctx: ApiContext, user: ApiUser, body: dict[str, Any], *, img2img: bool
) -> ApiRequest:
    """A web-UI txt2img/img2img body as an ApiRequest; Invalid names the client's field."""
    prompt = body.get("prompt", "")
    negative = body.get("negative_prompt")
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        if text is not None and not isinstance(text, str):
            raise Invalid(name, f"must be text (got {type(text).__name__})")
    n_iter = _integer(body, "n_iter", 1, 1, MAX_N_ITER)
    batch_size = _integer(body, "batch_size", 1, 1, 8)
    seed = whole(body.get("seed", -1))
    if seed is None or seed == -1:
        seed = random_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise Invalid("seed", f"must be -1 or a whole number from 0 to {MAX_SEED} (got {seed!r})")
    sampler = sampler_name(
        body.get("sampler_name") or body.get("sampler_index"), body.get("scheduler")
    )
    for side in ("width", "height"):
        value = whole(body.get(side))
        if value is not None:
            try:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"must be a whole number (got {value!r})")
                check_size(value)
            except ValueError as exc:
                raise Invalid(side, str(exc)) from None
    request: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "num_inference_steps": body.get("steps"),
        "guidance_scale": body.get("cfg_scale"),
        "seed": seed,
        "width": whole(body.get("width")),
        "height": whole(body.get("height")),
        "num_images": batch_size,
        "scheduler": sampler,
        "draft": False,
        "model": await request_model(ctx, user, body),
    }
    if isinstance(prompt, str) and prompt.strip():
        try:
            request["loras"] = await prompt_lora_entries(
                ctx.storage.loras,
                user.user_id,
                prompt,
                ctx.config.generation.max_loras,
                _lora_fits(ctx, request["model"]),
            )
        except ValueError as exc:
            raise api_field_error(exc) from None
    if img2img:
        await _img2img_fields(ctx, body, request)
    hires = None
    if flag(body, "enable_hr", False) and not img2img:
        hires = _hires(body)
    return ApiRequest(
        request=request,
        batch_size=batch_size,
        n_iter=n_iter,
        hires=hires,
        send_images=flag(body, "send_images", True),
        save_images=flag(body, "save_images", False),
        received=body,
    )


def _hires(body: dict[str, Any]) -> HiresPass:
    scale = _number(body, "hr_scale") or 2.0
    strength = _number(body, "denoising_strength")
    steps = _integer(body, "hr_second_pass_steps", 0, 0, 150) or None
    resize = (
        _integer(body, "hr_resize_x", 0, 0, MAX_HIRES_SIDE),
        _integer(body, "hr_resize_y", 0, 0, MAX_HIRES_SIDE),
    )
    try:
        strength = check_strength(UPSCALE_STRENGTH if strength is None else strength)
    except ValueError as exc:
        raise Invalid("denoising_strength", str(exc).split(": ", 1)[-1]) from None
    return HiresPass(scale, strength, steps, resize)


def check_hires(hires: HiresPass, width: int, height: int) -> HiresPass:
    """The hires pass for a first pass of this size: hr_resize_x/y turned into a scale (the
    larger ratio: the picture keeps its shape, no crop); Invalid past the size limit."""
    field_name = "hr_scale"
    if any(hires.resize):
        x, y = hires.resize
        hires = replace(hires, scale=max(x / width, y / height))
        field_name = "hr_resize_x" if x / width >= y / height else "hr_resize_y"
    try:
        upscaled_size(width, height, hires.scale)
    except ValueError as exc:
        raise Invalid(field_name, str(exc).split(": ", 1)[-1]) from None
    return hires


async def _img2img_fields(ctx: ApiContext, body: dict[str, Any], request: dict[str, Any]) -> None:
    """Decode and store init_images[0] (and mask) under the outputs folder; set their fields."""
    images = body.get("init_images")
    if not isinstance(images, list) or not images:
        raise Invalid("init_images", "must be a list with one base64-encoded image")
    data = decode_image(images[0], "init_images")
    exact = body.get("width") is not None or body.get("height") is not None
    native = ctx.door.native_size()
    width = whole(body.get("width")) or native[0]
    height = whole(body.get("height")) or native[1]
    files = ctx.storage.files
    try:
        path, width, height = await asyncio.to_thread(
            store_source, files, data, "init_images[0]", width, height, exact
        )
    except ImageRefused as exc:
        raise Invalid("init_images", str(exc)) from None
    request.update(init_image=path, width=width, height=height)
    strength = _number(body, "denoising_strength")
    if strength is not None:
        request["strength"] = strength
    if body.get("mask"):
        mask = decode_image(body["mask"], "mask")
        invert = flag(body, "inpainting_mask_invert", False)
        try:
            request["mask_image"] = await asyncio.to_thread(
                store_mask, files, mask, "mask", width, height, invert=invert
            )
        except ImageRefused as exc:
            raise Invalid("mask", str(exc).replace("`mask`: ", "")) from None
        blur = body.get("mask_blur")
        if blur is not None:
            request["mask_blur"] = blur
        # A mask repaints best on the model's 9-channel inpainting partner, when one is listed.
        model = request.get("model") or ctx.door.resident_model
        overrides = body.get("override_settings") or {}  # null, as some clients send it
        if model and overrides.get("sd_model_checkpoint") is None:
            request["model"] = ctx.door.inpaint_partner(model) or request.get("model")
