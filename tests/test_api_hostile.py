"""The web-UI API against sloppy and hostile clients: odd but valid inputs are taken, bad ones
answered 422 (never 500), /interrupt ends the whole call, a full queue never strands a call."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
from PIL import Image

from scheduling.events import Queued
from tests.api_harness import image_of, png_b64, serving

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
        # Booleans as strings: "false" is false (hires was run and images kept before).
        status, body = await call(http, api.url, T2I, {
            "prompt": "a cat", "enable_hr": "false", "save_images": "false", "n_iter": 1.0,
        })  # fmt: skip
        assert status == 200, body
        assert image_of(body["images"][0]).size == (64, 64)
        await api.settled()
        assert not list((tmp_path / "outputs").rglob("job*.png"))

        truncated = base64.b64decode(png_b64("red", (128, 128)))
        half = base64.b64encode(truncated[: len(truncated) // 2]).decode()
        refusals = [
            (T2I, {"prompt": "a cat", "enable_hr": "maybe"}, "enable_hr"),
            (T2I, {"prompt": "a cat", "seed": 7.5}, "seed"),
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
