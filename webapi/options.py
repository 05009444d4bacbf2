"""GET/POST /sdapi/v1/options: the web UI's settings, as far as they mean something here.

Only ``sd_model_checkpoint`` changes anything: it picks one of MODEL_CHOICES for the calling
credential alone (stored in its user profile, the ``model`` that /settings sets for a Discord
member), so one client cannot switch the model under everyone else. Every other key is accepted
and ignored, as clients send whole option sets back.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from engine.img2img import upscaler_name
from webapi.context import ApiContext, ApiUser, context_of, user_of
from webapi.errors import invalid, json_object

log = logging.getLogger(__name__)

CHECKPOINT = "sd_model_checkpoint"
# A web-UI checkpoint title: "name.safetensors [0123abcd]"; the name is what counts here.
_TITLE_RE = re.compile(r"^(?P<name>.*?)(?:\.(?:safetensors|ckpt|pt|bin))?(?:\s*\[[0-9a-fA-F]+\])?$")


async def caller_model(context: ApiContext, user: ApiUser) -> str | None:
    """The checkpoint the caller chose with POST /options, or None (none, or no longer allowed)."""
    profile = await context.storage.users.get_user(user.user_id)
    if profile is None or not profile.model:
        return None
    return context.door.find_model(profile.model)


def find_checkpoint(context: ApiContext, title: str) -> str | None:
    """The allowed model a web-UI checkpoint title names (any case, file suffix, hash), or None."""
    door = context.door
    text = title.strip()
    found = door.find_model(text) if text else None
    if found is None:
        match = _TITLE_RE.match(text)
        name = match.group("name").strip() if match else ""
        found = door.find_model(name) if name else None
    return found


async def get_options(request: web.Request) -> web.Response:
    """GET /sdapi/v1/options: the caller's checkpoint and the fixed values of this server."""
    context = context_of(request)
    door, config = context.door, context.config
    chosen = await caller_model(context, user_of(request))
    return web.json_response(
        {
            CHECKPOINT: chosen or door.resident_model or door.default_model,
            "sd_checkpoint_hash": None,
            "sd_vae": "Automatic",
            "sd_lora": "None",
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "samples_format": "png",
            "grid_format": "png",
            "enable_pnginfo": True,
            "live_previews_enable": config.queue.previews,
            "show_progress_every_n_steps": 1,
            "live_preview_content": "Combined",
            "upscaler_for_img2img": upscaler_name(config.generation.upscaler),
        }
    )


async def set_options(request: web.Request) -> web.Response:
    """POST /sdapi/v1/options: switch the caller's checkpoint; other keys are ignored."""
    body = await json_object(request)
    context, user = context_of(request), user_of(request)
    wanted = body.get(CHECKPOINT)
    if wanted is not None:
        if not isinstance(wanted, str):
            raise invalid(CHECKPOINT, "must be a model name")
        name = find_checkpoint(context, wanted)
        if name is None:
            choices = ", ".join(context.door.model_names())
            raise invalid(CHECKPOINT, f"unknown model {wanted!r}; choose one of: {choices}")
        await context.storage.users.update_defaults(user.user_id, model=name)
        log.info("API user %s chose the model %s", user.name, name)
    ignored = sorted(key for key in body if key != CHECKPOINT)
    if ignored:
        log.debug("API user %s: options ignored here: %s", user.name, ", ".join(ignored))
    return web.json_response(None)


def add_routes(app: web.Application) -> None:
    """Register GET and POST /sdapi/v1/options."""
    app.router.add_get("/sdapi/v1/options", get_options)
    app.router.add_post("/sdapi/v1/options", set_options)
