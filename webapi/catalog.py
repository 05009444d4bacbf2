"""What this server offers, in the web UI's list shapes: models, samplers, LoRAs, embeddings.

Lists the web UI has and this engine does not (VAEs, hypernetworks, styles, face restorers,
scripts) are answered empty, so clients that read them all at connect time work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from engine.img2img import RESAMPLER, upscaler_name
from engine.model_choices import ModelCatalog
from engine.schedulers import SCHEDULER_NAMES, canonical_scheduler_name
from webapi.context import context_of, user_of

KARRAS = " Karras"
# The web UI's short aliases of its samplers (k-diffusion names) for the ones this engine has.
_ALIASES: dict[str, list[str]] = {
    "DPM++ 2M Karras": ["k_dpmpp_2m_ka"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ SDE Karras": ["k_dpmpp_sde_ka"],
    "DPM++ 2M SDE Karras": ["k_dpmpp_2m_sde_ka"],
    "Euler": ["k_euler"],
    "Euler a": ["k_euler_a"],
    "DDIM": ["ddim"],
    "UniPC": ["unipc"],
    "LMS": ["k_lms"],
    "Heun": ["k_heun"],
    "PNDM": ["plms", "PLMS"],
    "LCM": ["k_lcm"],
}
# The web UI's sampler options, for the samplers they describe.
_OPTIONS: dict[str, dict[str, Any]] = {
    "DPM++ SDE Karras": {"brownian_noise": True},
    "DPM++ 2M SDE Karras": {"brownian_noise": True},
    "Euler a": {"uses_ensd": True},
    "Heun": {"second_order": True},
}
# The noise schedules a request's `scheduler` may name (web UI 1.9+): a sampler's own, or Karras.
SCHEDULES = {"automatic": "Automatic", "karras": "Karras"}
# The web UI's schedules that space the steps evenly, as this engine's samplers do on their own
# (Automatic): clients keep one from a web UI (SillyTavern's default is "normal").
EVEN_SCHEDULES = ("uniform", "normal", "simple", "sgm_uniform", "ddim")


def sampler_for(sampler_name: str | None, scheduler: str | None = None) -> str | None:
    """This engine's sampler for a web-UI ``sampler_name`` + ``scheduler`` pair (None: default).

    Accepts the names of /samplers, their aliases, and the 1.9+ split ("DPM++ 2M" + "Karras");
    ValueError starting with the field at fault for a pair this engine cannot run.
    """
    schedule = "_".join((scheduler or "").lower().split()) or "automatic"
    if schedule in EVEN_SCHEDULES:
        schedule = "automatic"
    if schedule not in SCHEDULES:
        raise ValueError(
            f"scheduler: unknown schedule {scheduler!r}; choose one of: Automatic, Karras"
        )
    if sampler_name is None or not sampler_name.strip():
        return None
    wanted = " ".join(sampler_name.split())
    by_alias = {alias.lower(): name for name, aliases in _ALIASES.items() for alias in aliases}
    base = by_alias.get(wanted.lower())
    if base is None:
        for candidate in (wanted, wanted + KARRAS):
            try:
                base = canonical_scheduler_name(candidate)
                break
            except ValueError:
                continue
    if base is None:
        raise ValueError(
            f"sampler_name: unknown sampler {sampler_name!r}; choose one of: "
            + ", ".join(SCHEDULER_NAMES)
        )
    if schedule == "karras" and not base.endswith(KARRAS):
        if base + KARRAS not in SCHEDULER_NAMES:
            raise ValueError(f"scheduler: {base} has no Karras schedule here; use Automatic")
        base += KARRAS
    return base


def _sampler_item(name: str) -> dict[str, Any]:
    options = dict(_OPTIONS.get(name, {}))
    if name.endswith(KARRAS):
        options["scheduler"] = "karras"
    return {"name": name, "aliases": _ALIASES.get(name, []), "options": options}


async def samplers(request: web.Request) -> web.Response:
    """GET /sdapi/v1/samplers."""
    return web.json_response([_sampler_item(name) for name in SCHEDULER_NAMES])


async def schedulers(request: web.Request) -> web.Response:
    """GET /sdapi/v1/schedulers: the noise schedules a txt2img ``scheduler`` may name."""
    rho = {"automatic": -1.0, "karras": 7.0}
    return web.json_response(
        [
            {
                "name": key,
                "label": label,
                "aliases": None,
                "default_rho": rho[key],
                "need_inner_model": False,
            }
            for key, label in SCHEDULES.items()
        ]
    )


def _shown_source(source: str) -> str:
    """A model's source as /sd-models shows it: a hub id as is, a local path by its last part."""
    path = Path(source).expanduser()
    return path.name if path.exists() else source


async def sd_models(request: web.Request) -> web.Response:
    """GET /sdapi/v1/sd-models: MODEL_CHOICES (the default first); the title is the name."""
    context = context_of(request)
    model = context.config.model
    catalog = ModelCatalog(model.model_id, model.choices)
    items = []
    for name in context.door.model_names():
        choice = catalog.find(name)
        items.append(
            {
                "title": name,
                "model_name": name,
                "hash": None,
                "sha256": None,
                "filename": _shown_source(choice.source) if choice else name,
                "config": None,
            }
        )
    return web.json_response(items)


async def loras(request: web.Request) -> web.Response:
    """GET /sdapi/v1/loras: the ready LoRAs the caller may use (shared ones and its own)."""
    context, user = context_of(request), user_of(request)
    records = await context.storage.loras.list_loras(visible_to=user.user_id, status="ready")
    items = []
    for record in records:
        metadata = {
            "trigger_word": record.trigger_word,
            "rank": record.rank,
            "base_model": record.base_model,
            "sha256": record.sha256,
        }
        items.append(
            {
                "name": record.name,
                "alias": record.name,
                "path": record.path,
                "metadata": {key: value for key, value in metadata.items() if value is not None},
            }
        )
    return web.json_response(items)


async def embeddings(request: web.Request) -> web.Response:
    """GET /sdapi/v1/embeddings: those fitting the loaded model are loaded, the rest skipped."""
    context = context_of(request)
    width = context.door.resident_width
    loaded: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for record in await context.storage.embeddings.list():
        item = {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": record.base_model,
            "shape": record.width,
            "vectors": record.vectors,
        }
        (loaded if width is None or record.width == width else skipped)[record.name] = item
    return web.json_response({"loaded": loaded, "skipped": skipped})


async def upscalers(request: web.Request) -> web.Response:
    """GET /sdapi/v1/upscalers: Lanczos, and the GEN_UPSCALER model when one is set."""
    setting = context_of(request).config.generation.upscaler.strip()
    items: list[dict[str, Any]] = [
        {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
        {"name": RESAMPLER, "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    ]
    if setting:
        name = upscaler_name(setting)
        items.append(
            {
                "name": name,
                "model_name": name,
                "model_path": Path(setting).name,
                "model_url": None,
                "scale": None,
            }
        )
    return web.json_response(items)


async def scripts(request: web.Request) -> web.Response:
    """GET /sdapi/v1/scripts: no web-UI scripts run here."""
    return web.json_response({"txt2img": [], "img2img": []})


async def nothing(request: web.Request) -> web.Response:
    """A web-UI list this engine has nothing in (VAEs, hypernetworks, styles…)."""
    return web.json_response([])


async def refreshed(request: web.Request) -> web.Response:
    """POST /refresh-*: models come from the settings and LoRAs/embeddings from the database,
    which every request reads afresh: nothing to reload."""
    return web.json_response(None)


EMPTY_LISTS = (
    "sd-vae",
    "hypernetworks",
    "prompt-styles",
    "face-restorers",
    "realesrgan-models",
    "latent-upscale-modes",
    "script-info",
    "extensions",
)
REFRESHES = ("refresh-checkpoints", "refresh-loras", "refresh-embeddings", "refresh-vae")


def add_routes(app: web.Application) -> None:
    """Register the catalogue endpoints."""
    router = app.router
    router.add_get("/sdapi/v1/sd-models", sd_models)
    router.add_get("/sdapi/v1/samplers", samplers)
    router.add_get("/sdapi/v1/schedulers", schedulers)
    router.add_get("/sdapi/v1/loras", loras)
    router.add_get("/sdapi/v1/embeddings", embeddings)
    router.add_get("/sdapi/v1/upscalers", upscalers)
    router.add_get("/sdapi/v1/scripts", scripts)
    for name in EMPTY_LISTS:
        router.add_get(f"/sdapi/v1/{name}", nothing)
    for name in REFRESHES:
        router.add_post(f"/sdapi/v1/{name}", refreshed)
