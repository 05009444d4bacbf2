"""The engine's request fields under the names /imagine shows, for refusals users can act on."""

from __future__ import annotations

from engine.errors import RequestError

# GenerationRequest field -> (the option as /imagine shows it, what of it is meant).
OPTION_NAMES: dict[str, tuple[str, str]] = {
    "prompt": ("prompt", ""),
    "negative_prompt": ("negative", ""),
    "num_inference_steps": ("steps", ""),
    "guidance_scale": ("cfg", ""),
    "seed": ("seed", ""),
    "width": ("size", "the width "),
    "height": ("size", "the height "),
    "num_images": ("count", ""),
    "scheduler": ("sampler", ""),
    "draft": ("draft", ""),
    "init_image": ("image", ""),
    "strength": ("strength", ""),
    "upscale": ("upscale", ""),
    "mask_image": ("mask", ""),
    "mask_region": ("Vary (Region)", "the region "),
    "mask_blur": ("mask", "the edge blur of the "),
    "outpaint": ("Zoom out / Pan", ""),
    "model": ("model", "/settings "),
    "loras": ("prompt", ""),  # the stack comes from the prompt's <lora:…> tags
    "lora_scale": ("scale", "/lora use "),
}


def refusal(exc: ValueError) -> str:
    """A refused request in the user's words: the option as typed, then what is wrong."""
    error = RequestError.from_value_error(exc)
    detail = error.detail if error.detail.endswith((".", "?", "!")) else error.detail + "."
    if not error.field:
        return detail[:1].upper() + detail[1:]
    option, part = OPTION_NAMES.get(error.field, (error.field, ""))
    if part.startswith("/"):  # a setting saved by another command
        return f"`{part}{option}`: {detail}"
    return f"`{option}`: {part}{detail}"
