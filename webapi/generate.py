"""POST /sdapi/v1/txt2img and /img2img: web-UI requests as fair-queue jobs, answered with PNGs."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from scheduling.disk import DiskFull
from scheduling.queue import QueueFullError
from webapi.context import CONTEXT, ApiContext, context_of, user_of
from webapi.errors import http_error, invalid, json_object
from webapi.jobs import DISCONNECTED, Call, JobFailed, JobWatch, Outcome, ShuttingDown
from webapi.payloads import ApiRequest, api_field_error, check_hires, parse_request

WATCH = web.AppKey("watch", JobWatch)
SHUTDOWN = (
    "The server is shutting down; this request was not finished. Send it again once it is back."
)
SHUTDOWN_REASON = "the server shut down before the job ended"


def add_routes(app: web.Application) -> None:
    """Register the generation endpoints (and the watch that waits for their jobs)."""
    context = app[CONTEXT]
    app[WATCH] = JobWatch(context.scheduler, context.storage)
    app.router.add_post("/sdapi/v1/txt2img", txt2img)
    app.router.add_post("/sdapi/v1/img2img", img2img)


def watch_of(app: web.Application) -> JobWatch:
    """The JobWatch of an application (webapi.server stops it first on shutdown)."""
    return app[WATCH]


async def txt2img(request: web.Request) -> web.StreamResponse:
    """Text to image; enable_hr adds the upscale pass."""
    return await _generate(request, img2img=False)


async def img2img(request: web.Request) -> web.StreamResponse:
    """Image to image from init_images[0]; with a mask, only its white part is repainted."""
    return await _generate(request, img2img=True)


def _refused(exc: ValueError) -> web.HTTPError:
    error = api_field_error(exc)
    return invalid(error.field, error.message)


async def _generate(request: web.Request, *, img2img: bool) -> web.StreamResponse:
    ctx, user = context_of(request), user_of(request)
    watch = watch_of(request.app)
    body = await json_object(request)
    if ctx.scheduler.stopping:
        raise http_error(503, SHUTDOWN)
    try:
        api = await parse_request(ctx, user, body, img2img=img2img)
        # Refused before anything is queued, as /imagine does.
        resolved = ctx.door.prepare(api.job_request(0))
        if api.hires is not None:
            api.hires = check_hires(api.hires, resolved.width, resolved.height)
    except ValueError as exc:
        raise _refused(exc) from None
    call = Call()
    reason = DISCONNECTED
    try:
        try:
            outcomes = await watch.run(user, api, call)
        except QueueFullError as exc:
            retry = str(watch.retry_after(user))
            raise http_error(429, str(exc), headers={"Retry-After": retry}) from None
        except ShuttingDown:
            reason = SHUTDOWN_REASON
            raise http_error(503, SHUTDOWN) from None
        except JobFailed as exc:
            raise http_error(500, str(exc)) from None
        except DiskFull as exc:  # the disk named in words, as Discord users are told
            raise http_error(507, str(exc)) from None
        except ValueError as exc:  # a hires pass refused by the engine
            raise _refused(exc) from None
        answer = await answer_body(ctx, api, outcomes)
        # Written before the jobs count as delivered: a client gone meanwhile got nothing.
        response = web.json_response(answer)
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        await watch.settle(call, keep_images=api.save_images, reason=reason)


async def answer_body(ctx: ApiContext, api: ApiRequest, outcomes: list[Outcome]) -> dict[str, Any]:
    """The web UI's answer: base64 PNGs (with their parameters), the request, and info."""
    paths = [path for outcome in outcomes for path in outcome.paths]
    images: list[str] = []
    if api.send_images:
        for png in await asyncio.to_thread(_read_all, paths):
            images.append(base64.b64encode(png).decode("ascii"))
    return {
        "images": images,
        "parameters": api.received,
        "info": json.dumps(info_of(api, outcomes)),
    }


def _read_all(paths: list[str]) -> list[bytes]:
    return [Path(path).read_bytes() for path in paths if Path(path).is_file()]


def web_sampler(name: str | None) -> tuple[str | None, str]:
    """An engine sampler as the web UI's sampler_name and scheduler ("DPM++ 2M", "Karras")."""
    if name and name.endswith(" Karras"):
        return name.removesuffix(" Karras"), "Karras"
    return name, "Automatic"


def info_of(api: ApiRequest, outcomes: list[Outcome]) -> dict[str, Any]:
    """The `info` JSON of an answer: seeds, prompts, infotexts, sizes, sampler, model, ..."""
    first = outcomes[0].job.request.to_dict() if outcomes else dict(api.request)
    seeds = [seed for outcome in outcomes for seed in outcome.seeds]
    infotexts = [text for outcome in outcomes for text in outcome.result.get("parameters", [])]
    sampler, scheduler = web_sampler(first.get("scheduler"))
    model = outcomes[0].result.get("model") if outcomes else None
    count = len(seeds)
    return {
        "prompt": first.get("prompt"),
        "all_prompts": [first.get("prompt")] * count,
        "negative_prompt": first.get("negative_prompt") or "",
        "all_negative_prompts": [first.get("negative_prompt") or ""] * count,
        "seed": seeds[0] if seeds else api.request.get("seed"),
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": first.get("width"),
        "height": first.get("height"),
        "sampler_name": sampler,
        "scheduler": scheduler,
        "cfg_scale": first.get("guidance_scale"),
        "steps": first.get("num_inference_steps"),
        "batch_size": api.batch_size,
        "n_iter": api.n_iter,
        "denoising_strength": first.get("strength"),
        "restore_faces": False,
        "sd_model_name": model or first.get("model"),
        "sd_model_hash": None,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "styles": [],
        "clip_skip": 1,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "extra_generation_params": {},
        "is_using_inpainting_conditioning": False,
        "version": "sd-discord-bot",
    }
