"""Generation requests (what a user asks for) and results (what the engine returns)."""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.config import (
    MAX_CFG,
    MAX_NUM_IMAGES,
    MAX_STEPS,
    MIN_CFG,
    MIN_STEPS,
    GenerationConfig,
    check_range,
    check_size,
)
from engine.errors import RequestError
from engine.init_image import (
    DEFAULT_STRENGTH,
    UPSCALE_STRENGTH,
    check_strength,
    fit_size,
    init_image_size,
    upscaled_size,
)
from engine.lora_stack import LoraUse, stack_from_entries
from engine.prompt_syntax import (
    check_supported,
    find_lora_tags,
    parse_weights,
    strip_lora_tags,
)
from engine.region import resolve_region
from engine.schedulers import canonical_scheduler_name

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000


@dataclass
class GenerationRequest:
    """A generation request; fields left None take the user's or the engine's defaults."""

    prompt: str
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int | None = None
    scheduler: str | None = None
    lora: str | None = None  # path of a LoRA file or folder
    lora_name: str | None = None  # name shown to users and written to metadata
    lora_scale: float = 1.0
    # A draft: few-step LoRA, its sampler, few steps, CFG 1; None: the server's default.
    draft: bool | None = None
    # The resolved stack, [path, weight, name] each; None: resolve the prompt's <lora:…> tags.
    loras: list[Any] | None = None
    init_image: str | None = None  # img2img: path of the source image (stored, not its pixels)
    strength: float | None = None  # img2img: how much is repainted, 0.05-1 (default 0.6)
    upscale: float | None = None  # upscale the init image by this factor, then img2img
    model: str | None = None  # a MODEL_CHOICES name; None: the model loaded now
    # Region jobs repaint part of init_image (engine/region.py, engine/inpaint.py):
    mask_image: str | None = None  # path of a mask image, white = repaint, any size
    mask_region: str | None = None  # or 3x3 grid cells "0,4,8" / a preset ("left half")
    mask_blur: int | None = None  # soft mask edge in px, 0-64 (default 4)
    outpaint: str | None = None  # "zoom:1.5", "zoom:2", "pan:left|right|up|down"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the request."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        """Rebuild a request from to_dict() output, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ResolvedRequest:
    """A request with every field decided and validated; seeds[i] belongs to image i."""

    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    width: int
    height: int
    scheduler: str
    lora: str | None
    lora_name: str | None
    lora_scale: float
    draft: bool = False
    loras: tuple[LoraUse, ...] = ()
    init_image: str | None = None
    strength: float | None = None
    upscale: float | None = None
    model: str | None = None
    mask_image: str | None = None
    mask_region: str | None = None
    mask_blur: int | None = None
    outpaint: str | None = None

    @property
    def num_images(self) -> int:
        """How many images this request makes."""
        return len(self.seeds)


@dataclass
class GenerationResult:
    """Images with the seed and parameters text of each, timings, and any warnings."""

    images: list[Any]
    seeds: list[int]
    parameters: list[str]
    request: ResolvedRequest
    seconds: float
    seconds_per_step: float
    warnings: list[str] = field(default_factory=list)
    nsfw: list[bool] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


def random_seed() -> int:
    """A random seed that leaves room for seed+i of an 8-image batch."""
    return secrets.randbelow(MAX_SEED - 8)


def check_prompt_syntax(text: str, field_name: str = "prompt") -> None:
    """Refuse bad weights, <lora:…> tags or unsupported syntax before any work starts.

    ValueError naming the field.
    """
    try:
        find_lora_tags(text)
        check_supported(text)
        parse_weights(strip_lora_tags(text))
    except ValueError as exc:
        raise ValueError(str(exc).replace("prompt:", f"{field_name}:", 1)) from None


def resolve_request(
    request: GenerationRequest,
    defaults: GenerationConfig,
    model_defaults: dict[str, Any],
    draft_default: bool = False,
) -> ResolvedRequest:
    """Fill unset fields (request, then model defaults, then settings) and validate everything.

    `draft_default` decides a request that does not say whether it is a draft.
    RequestError (a ValueError) names the field of the first bad value.
    """
    try:
        return _resolve(request, defaults, model_defaults, draft_default)
    except ValueError as exc:
        raise RequestError.from_value_error(exc) from None


def _resolve(
    request: GenerationRequest,
    defaults: GenerationConfig,
    model_defaults: dict[str, Any],
    draft_default: bool,
) -> ResolvedRequest:

    draft = draft_default if request.draft is None else bool(request.draft)
    draft_defaults = {
        "num_inference_steps": defaults.draft_steps,
        "guidance_scale": defaults.draft_guidance,
        "negative_prompt": "",  # the default negative is for full quality (and CFG 1 drops it)
    }

    def pick(name: str) -> Any:
        value = getattr(request, name)
        if draft and name == "scheduler":
            return defaults.draft_sampler  # a few-step LoRA only works with its own sampler
        if value is not None:
            return value
        if draft and name in draft_defaults:
            return draft_defaults[name]
        if name in model_defaults and name not in defaults.model_fields_set:
            return model_defaults[name]
        return getattr(defaults, name)

    prompt = request.prompt if isinstance(request.prompt, str) else ""
    if not prompt.strip():
        raise ValueError("prompt: must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt: longer than {MAX_PROMPT_CHARS} characters")
    check_prompt_syntax(prompt)
    init = _resolve_init(request, defaults, model_defaults)
    checks = [
        ("width", lambda v: check_size(int(v))),
        ("height", lambda v: check_size(int(v))),
        ("num_inference_steps", lambda v: check_range(int(v), MIN_STEPS, MAX_STEPS)),
        ("guidance_scale", lambda v: check_range(float(v), MIN_CFG, MAX_CFG)),
        ("num_images", lambda v: check_range(int(v), 1, MAX_NUM_IMAGES)),
    ]
    values: dict[str, Any] = {}
    for name, check in checks:
        value = init.get(name) if name in init else pick(name)
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be a number (got {value!r})")
            if not math.isfinite(value):
                raise ValueError(f"must be a finite number (got {value!r})")
            if name != "guidance_scale" and int(value) != value:
                raise ValueError(f"must be a whole number (got {value!r})")
            check(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        values[name] = value
    scheduler = pick("scheduler")
    if not isinstance(scheduler, str):
        raise ValueError("scheduler: must be a name")
    scheduler = canonical_scheduler_name(scheduler)
    seed = request.seed
    if seed is None:
        seed = random_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: must be a whole number between 0 and {MAX_SEED} (got {seed!r})")
    count = int(values["num_images"])
    scale = request.lora_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 2:
        raise ValueError(f"lora_scale: must be between 0 and 2 (got {request.lora_scale!r})")
    negative = pick("negative_prompt") or ""
    check_prompt_syntax(str(negative), "negative_prompt")
    if init and int(values["num_inference_steps"]) * init["strength"] < 1:
        raise ValueError(
            f"strength: {init['strength']:g} of {int(values['num_inference_steps'])} steps leaves "
            "no denoising step; raise the strength or the steps"
        )
    return ResolvedRequest(
        prompt=prompt,
        negative_prompt=str(negative),
        num_inference_steps=int(values["num_inference_steps"]),
        guidance_scale=float(values["guidance_scale"]),
        seeds=tuple((seed + i) % (MAX_SEED + 1) for i in range(count)),
        width=int(values["width"]),
        height=int(values["height"]),
        scheduler=scheduler,
        lora=request.lora,
        lora_name=request.lora_name,
        lora_scale=float(request.lora_scale),
        draft=draft,
        loras=stack_from_entries(request.loras or [], defaults.max_loras),
        init_image=init.get("init_image"),
        strength=init.get("strength"),
        upscale=init.get("upscale"),
        model=request.model,
        mask_image=init.get("mask_image"),
        mask_region=init.get("mask_region"),
        mask_blur=init.get("mask_blur"),
        outpaint=init.get("outpaint"),
    )


def native_size(defaults: GenerationConfig, model_defaults: dict[str, Any]) -> tuple[int, int]:
    """The model's own width and height, unless the settings give a width of their own."""
    width = model_defaults.get("width", defaults.width)
    height = model_defaults.get("height", defaults.height)
    if "width" in defaults.model_fields_set:
        width, height = defaults.width, defaults.height
    return int(width), int(height)


def _resolve_init(
    request: GenerationRequest, defaults: GenerationConfig, model_defaults: dict[str, Any]
) -> dict[str, Any]:
    """The img2img fields decided: path, strength, upscale and the output width and height."""
    path = request.init_image
    native = native_size(defaults, model_defaults)
    if path is None:
        resolve_region(request, native)  # refuses a mask or an outpaint without an image
        if request.strength is not None:
            raise ValueError("strength: only applies with an init image")
        if request.upscale is not None:
            raise ValueError("upscale: needs an init image to enlarge")
        return {}
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"init_image: must be a file path (got {path!r})")
    source = init_image_size(path)
    region = resolve_region(request, native)
    found: dict[str, Any] = {"init_image": path}
    if request.upscale is not None:
        factor = request.upscale
        found["width"], found["height"] = upscaled_size(*source, factor)  # type: ignore[arg-type]
        found["upscale"] = float(factor)
        default_strength = UPSCALE_STRENGTH
    elif region:
        default_strength = region.pop("default_strength")
        found.update(region)
    else:
        default_strength = DEFAULT_STRENGTH
        if request.width is None and request.height is None:
            # The model's native pixel count, in the source's aspect ratio.
            found["width"], found["height"] = fit_size(
                *source, *native_size(defaults, model_defaults)
            )
    strength = default_strength if request.strength is None else request.strength
    found["strength"] = check_strength(strength)
    return found
