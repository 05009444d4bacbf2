"""The web-UI API against sloppy and hostile clients: odd but valid inputs are taken, bad ones
answered 422 (never 500), /interrupt ends the whole call, a full queue never strands a call."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.requests import GenerationRequest
from scheduling.events import Finished, JobEvent, Progress, Queued, Started
from scheduling.jobs import NewJob
from scheduling.queue import QueueFullError
from tests.api_harness import image_of, png_b64, serving
from webapi.context import is_api_job

T2I, I2I = "/sdapi/v1/txt2img", "/sdapi/v1/img2img"
# A non-ASCII password, as Python `requests` sends it: latin-1 bytes, not UTF-8.
USER, PASSWORD = "jörg", "pä:ss"
LATIN1 = {
    "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode("latin-1")).decode()
}


async def call(
    http: aiohttp.ClientSession, url: str, path: str, body: Any = None, *, data: bytes = b""
) -> tuple[int, Any]:
    """POST JSON (or raw bytes) with the latin-1 credentials; (status, JSON body)."""
    kwargs: dict[str, Any] = {"json": body} if data == b"" else {"data": data}
    async with http.post(url + path, headers=LATIN1, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


def field_of(answer: dict[str, Any]) -> str:
    return answer["detail"][0]["loc"][-1]


async def test_sloppy_clients_are_served_and_bad_values_named(tiny_generator, tmp_path) -> None:
    async with (
        serving(tiny_generator, tmp_path, auth=f"{USER}:{PASSWORD}") as api,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(api.url + "/internal/ping", headers=LATIN1) as response:
            assert response.status == 200 and await response.json() == {}
        # Base64 wrapped at 76 columns (MIME style) with its padding lost, behind a data: URL;
        # override_settings null with a mask (was a 500).
        picture = png_b64("red").rstrip("=")
        wrapped = "\n".join(picture[i : i + 76] for i in range(0, len(picture), 76))
        status, body = await call(http, api.url, I2I, {
            "prompt": "a cat", "init_images": ["data:image/png;base64," + wrapped],
            "mask": png_b64("white"), "override_settings": None, "steps": 4,
            "width": 64.0, "height": 64, "seed": 5.0,
        })  # fmt: skip
        assert status == 200, body
        assert json.loads(body["info"])["all_seeds"] == [5]
        # Booleans as strings: "false" is false (hires was run and images kept before); the
        # schedule SillyTavern keeps by default ("normal": evenly spaced steps) runs as Automatic.
        status, body = await call(http, api.url, T2I, {
            "prompt": "a cat", "enable_hr": "false", "save_images": "false", "n_iter": 1.0,
            "sampler_name": "DDIM", "scheduler": "normal",
        })  # fmt: skip
        assert status == 200, body
        assert json.loads(body["info"])["scheduler"] == "Automatic"
        assert image_of(body["images"][0]).size == (64, 64)
        await api.settled()
        assert not list((tmp_path / "outputs").rglob("job*.png"))

        truncated = base64.b64decode(png_b64("red", (128, 128)))
        half = base64.b64encode(truncated[: len(truncated) // 2]).decode()
        text_bomb = PngInfo()  # a zTXt chunk inflating past Pillow's 1 MB limit (was a 500)
        text_bomb.add_text("parameters", "a" * 2_000_000, zip=True)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=text_bomb)
        bomb = base64.b64encode(buffer.getvalue()).decode()
        refusals = [
            ("/sdapi/v1/png-info", {"image": bomb}, "image"),
            (T2I, {"prompt": "a cat", "enable_hr": "maybe"}, "enable_hr"),
            (T2I, {"prompt": "a cat", "seed": 7.5}, "seed"),
            (T2I, {"prompt": "a cat", "negative_prompt": ["ugly"]}, "negative_prompt"),
            ("/sdapi/v1/extra-single-image", {"image": half, "upscaler_1": "Lanczos"}, "image"),
        ]
        for path, request, field in refusals:
            status, answer = await call(http, api.url, path, request)
            assert (status, field_of(answer)) == (422, field), (request, answer)
        nested = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError (was a 500)
        for path in (T2I, "/sdapi/v1/options"):
            status, answer = await call(http, api.url, path, data=nested)
            assert (status, field_of(answer)) == (422, "body"), answer
        # upscaler_1 null is the web UI's "None": the picture comes back as it was.
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), "blue").save(buffer, format="PNG")
        request = {"image": base64.b64encode(buffer.getvalue()).decode(), "upscaler_1": None}
        status, answer = await call(http, api.url, "/sdapi/v1/extra-single-image", request)
        assert status == 200 and image_of(answer["image"]).size == (16, 16), answer
        assert not [e for e in api.events if isinstance(e, Queued) and e.job.request.upscale]


async def test_interrupt_ends_the_rest_of_the_call(tiny_generator, tmp_path: Path) -> None:
    # n_iter past the per-user cap: the later iterations wait for room, then must not start.
    async with (
        serving(tiny_generator, tmp_path, queue={"per_user_cap": 1}) as api,
        aiohttp.ClientSession() as http,
    ):
        request = {"prompt": "a cat", "n_iter": 6, "steps": 100}
        answer = asyncio.create_task(call(http, api.url, T2I, request))
        await api.wait_for(lambda e: isinstance(e, Progress))
        async with http.post(api.url + "/sdapi/v1/interrupt") as response:
            assert response.status == 200
        status, body = await asyncio.wait_for(answer, 30)
        assert status == 200 and body["images"] == []
        await api.settled()
        started = {e.job.id for e in api.events if isinstance(e, Started)}
        queued = {e.job.id for e in api.events if isinstance(e, Queued)}
        assert len(started) == 1 and len(queued) <= 2, (started, queued)  # 6 and 5 before
        for job_id in queued:
            assert (await api.storage.get_job(job_id)).status == "cancelled"


async def test_a_hires_pass_waits_out_a_full_queue(tiny_generator, tmp_path: Path) -> None:
    # The global cap is full when the first pass ends (another user's job waits): the hires pass
    # must be queued once room frees, even though the caller has no job left to free it.
    async with (
        serving(tiny_generator, tmp_path, queue={"global_cap": 1}) as api,
        aiohttp.ClientSession() as http,
    ):
        queue = api.scheduler.queue
        held: list[Any] = []
        refused = asyncio.Event()

        def fill_the_queue(event: JobEvent) -> None:
            if isinstance(event, Finished) and is_api_job(event.job) and not held:
                held.append(queue.reserve(7))  # before the watch's task resumes: deterministic

        api.scheduler.subscribe(fill_the_queue)
        submit = api.scheduler.submit

        async def watched_submit(*args: Any, **kwargs: Any) -> Any:
            try:
                return await submit(*args, **kwargs)
            except QueueFullError:
                refused.set()
                raise

        api.scheduler.submit = watched_submit  # type: ignore[method-assign]
        request = {"prompt": "a cat", "enable_hr": True, "hr_scale": 2, "steps": 4,
                   "denoising_strength": 0.5}  # fmt: skip
        answer = asyncio.create_task(call(http, api.url, T2I, request))
        await asyncio.wait_for(refused.wait(), 30)
        queue.release(held[0])  # the other user's job is placed and runs
        await submit(NewJob(user_id=7, work=GenerationRequest("a dog", seed=1)))
        status, body = await asyncio.wait_for(answer, 8)  # the room poll alone takes 10 s
        assert status == 200 and image_of(body["images"][0]).size == (128, 128), body
