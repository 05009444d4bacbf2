"""POST /sdapi/v1/txt2img and /img2img through a real HTTP client over 127.0.0.1, tiny model."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from engine.requests import GenerationRequest
from scheduling.events import Cancelled, Progress, Queued
from scheduling.jobs import NewJob
from tests.api_harness import image_of, png_b64, post, serving
from webapi.jobs import RESTART_ERROR, end_orphaned_jobs

T2I, I2I = "/sdapi/v1/txt2img", "/sdapi/v1/img2img"


def info(body: dict) -> dict:
    return json.loads(body["info"])


async def test_txt2img_batches_seeds_and_parameters(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path) as api, aiohttp.ClientSession() as http:
        request = {
            "prompt": "a (red:1.3) circle",
            "seed": 77,
            "n_iter": 2,
            "batch_size": 2,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "unknown_field": {"ignored": True},
        }
        status, _, body = await post(http, api.url, T2I, request)
        assert status == 200, body
        assert body["parameters"] == request
        meta = info(body)
        assert meta["all_seeds"] == [77, 78, 79, 80]
        assert (meta["sampler_name"], meta["scheduler"]) == ("DPM++ 2M", "Karras")
        assert len(body["images"]) == 4 and len(meta["infotexts"]) == 4
        first = image_of(body["images"][0])
        assert "Seed: 77" in first.info["parameters"]
        assert "DPM++ 2M Karras" in first.info["parameters"]
        # Two jobs of two images each, both answered and marked delivered.
        jobs = sorted({e.job.id for e in api.events if isinstance(e, Queued)})
        assert len(jobs) == 2
        await api.settled()
        for job_id in jobs:
            job = await api.storage.get_job(job_id)
            assert job.delivered and job.status == "done" and job.reference == {"api": "api"}
        # save_images defaults to false (as in the web UI): the PNGs are gone after the answer.
        assert not list((tmp_path / "outputs").rglob("job*.png"))

        # The same seed makes the same image; -1 picks a new random one.
        again = await post(http, api.url, T2I, {"prompt": "a (red:1.3) circle", "seed": 77,
                                                "sampler_name": "DPM++ 2M Karras",
                                                "save_images": True})  # fmt: skip
        assert image_of(again[2]["images"][0]).tobytes() == first.tobytes()
        assert list((tmp_path / "outputs").rglob("job*.png"))
        randoms = [info((await post(http, api.url, T2I, {"prompt": "a cat", "seed": -1}))[2])
                   ["seed"] for _ in range(2)]  # fmt: skip
        assert randoms[0] != randoms[1]
        silent = await post(http, api.url, T2I, {"prompt": "a cat", "send_images": False})
        assert silent[2]["images"] == [] and info(silent[2])["all_seeds"]


async def test_img2img_mask_and_hires(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path) as api, aiohttp.ClientSession() as http:
        source = "data:image/png;base64," + png_b64("blue", (96, 64))
        status, _, body = await post(
            http, api.url, I2I,
            {"prompt": "a cat", "init_images": [source], "denoising_strength": 0.5,
             "width": 64, "height": 64, "steps": 4, "seed": 3},
        )  # fmt: skip
        assert status == 200, body
        assert image_of(body["images"][0]).size == (64, 64)
        assert "Denoising strength: 0.5" in info(body)["infotexts"][0]
        # The upload was stored under the outputs folder, named by its content.
        assert list((tmp_path / "outputs" / "sources").rglob("*.png"))

        # A mask: white = repaint; the black half of the picture stays as it was.
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (32, 0, 64, 64))
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        red = png_b64("red")
        status, _, body = await post(
            http, api.url, I2I,
            {"prompt": "a cat", "init_images": [red], "mask": base64.b64encode(
                buffer.getvalue()).decode(), "mask_blur": 0, "denoising_strength": 1.0,
             "width": 64, "height": 64, "steps": 4},
        )  # fmt: skip
        assert status == 200, body
        out = image_of(body["images"][0]).convert("RGB")
        assert out.getpixel((4, 32)) == (255, 0, 0)  # kept
        assert out.getpixel((60, 32)) != (255, 0, 0)  # repainted

        # enable_hr: each image enlarged by hr_scale and repainted in a second job.
        status, _, body = await post(
            http, api.url, T2I,
            {"prompt": "a dog", "enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5,
             "hr_second_pass_steps": 4, "batch_size": 2, "seed": 9},
        )  # fmt: skip
        assert status == 200, body
        assert [image_of(b).size for b in body["images"]] == [(128, 128), (128, 128)]
        assert info(body)["all_seeds"] == [9, 10]
        assert "Hires upscale: 2" in info(body)["infotexts"][0]
        # hr_resize_x/y: the larger ratio to the first pass (64 px here), the shape kept.
        status, _, body = await post(
            http, api.url, T2I,
            {"prompt": "a dog", "enable_hr": True, "hr_resize_x": 96, "hr_resize_y": 80,
             "hr_second_pass_steps": 4, "steps": 2, "seed": 9},
        )  # fmt: skip
        assert status == 200, body
        assert image_of(body["images"][0]).size == (96, 96)
        status, _, body = await post(
            http, api.url, T2I, {"prompt": "a dog", "enable_hr": True, "hr_resize_x": 48}
        )
        assert status == 422 and body["detail"][0]["loc"] == ["body", "hr_resize_x"], body


async def test_refusals_name_the_field(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path) as api, aiohttp.ClientSession() as http:
        cases = [
            (T2I, {"prompt": "a cat", "steps": 1000}, "steps"),
            (T2I, {"prompt": "a cat", "width": 100}, "width"),
            (T2I, {"prompt": "a cat", "cfg_scale": 99}, "cfg_scale"),
            (T2I, {"prompt": "a cat", "sampler_name": "Nope"}, "sampler_name"),
            (T2I, {"prompt": "a cat", "sampler_name": "DDIM", "scheduler": "Exponential"},
             "scheduler"),
            (T2I, {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": "sdxl"}},
             "override_settings.sd_model_checkpoint"),
            (T2I, {"prompt": "<lora:nobody:1> a cat"}, "prompt"),
            (T2I, {"prompt": ""}, "prompt"),
            (T2I, {"prompt": "a cat", "seed": "x"}, "seed"),
            (T2I, {"prompt": "a cat", "enable_hr": True, "hr_scale": 9}, "hr_scale"),
            (I2I, {"prompt": "a cat", "init_images": ["%%%not base64"]}, "init_images"),
            (I2I, {"prompt": "a cat", "init_images": [png_b64()], "denoising_strength": 3},
             "denoising_strength"),
        ]  # fmt: skip
        for path, body, field in cases:
            status, _, answer = await post(http, api.url, path, body)
            assert status == 422, (body, answer)
            assert answer["detail"][0]["loc"] == ["body", field], (body, answer)
        assert not [e for e in api.events if isinstance(e, Queued)]  # nothing was queued
        # The checkpoint as the web UI lists it ("name.safetensors [hash]") is found.
        name = api.server.context.door.model_names()[0]
        status, _, body = await post(
            http, api.url, T2I,
            {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": f"{name} [abc123]"}},
        )  # fmt: skip
        assert status == 200 and info(body)["sd_model_name"] == name


async def test_inline_lora_in_the_prompt(tiny_generator, tiny_lora: Path, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path) as api, aiohttp.ClientSession() as http:
        await api.storage.loras.add_lora("inky", path=str(tiny_lora), owner_id=1, shared=True)
        await api.storage.loras.add_lora("secret", path=str(tiny_lora), owner_id=1, shared=False)
        plain = await post(http, api.url, T2I, {"prompt": "a cat", "seed": 4})
        status, _, body = await post(http, api.url, T2I, {"prompt": "<lora:inky:1.5> a cat",
                                                          "seed": 4})  # fmt: skip
        assert status == 200, body
        assert "inky" in info(body)["infotexts"][0]
        assert image_of(body["images"][0]).tobytes() != image_of(plain[2]["images"][0]).tobytes()
        status, _, body = await post(http, api.url, T2I, {"prompt": "<lora:secret:1> a cat"})
        assert status == 422 and "secret" in body["detail"][0]["msg"]


async def test_credentials(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path, auth="ann:pw1,bo:pw2") as api:
        async with aiohttp.ClientSession() as http:
            for auth in (None, aiohttp.BasicAuth("ann", "wrong"), aiohttp.BasicAuth("eve", "pw1")):
                status, headers, _ = await post(http, api.url, T2I, {"prompt": "a"}, auth=auth)
                assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
            ok = aiohttp.BasicAuth("bo", "pw2")
            status, _, body = await post(http, api.url, T2I, {"prompt": "a cat"}, auth=ok)
            assert status == 200, body
        job = next(e.job for e in api.events if isinstance(e, Queued))
        assert job.reference == {"api": "bo"} and job.user_id < 0


async def test_cap_answers_429_with_retry_after(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path, queue={"per_user_cap": 1}) as api:
        api.scheduler.pause()
        async with aiohttp.ClientSession() as http:
            waiting = asyncio.create_task(post(http, api.url, T2I, {"prompt": "a cat"}))
            await api.wait_for(lambda e: isinstance(e, Queued))
            status, headers, body = await post(http, api.url, T2I, {"prompt": "a dog"})
            assert status == 429 and "limit is 1" in body["detail"]
            assert int(headers["Retry-After"]) >= 1
            api.scheduler.resume()
            assert (await waiting)[0] == 200
            # n_iter past the cap: later jobs join as earlier ones start (each its own job).
            status, _, body = await post(http, api.url, T2I, {"prompt": "a cat", "n_iter": 3})
            assert status == 200 and len(body["images"]) == 3


async def test_a_nearly_full_disk_answers_507_naming_it(tiny_generator, tmp_path: Path) -> None:
    # No disk here has a petabyte free: the threshold makes every disk "nearly full".
    async with serving(tiny_generator, tmp_path, min_free_mb=10**9) as api:
        async with aiohttp.ClientSession() as http:
            status, _, body = await post(http, api.url, T2I, {"prompt": "a cat"})
        assert status == 507 and "disk holding" in body["detail"], body
        assert await api.storage.undelivered_jobs() == []  # nothing was queued


async def test_disconnect_cancels_the_running_job(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path) as api:
        http = aiohttp.ClientSession()
        request = asyncio.create_task(
            post(http, api.url, T2I, {"prompt": "a cat", "steps": 150, "n_iter": 2})
        )
        progress = await api.wait_for(lambda e: isinstance(e, Progress))
        request.cancel()
        await http.close()  # the connection closes mid-wait
        ended = await api.wait_for(lambda e: isinstance(e, Cancelled) and e.was_running)
        assert ended.job.id == progress.job.id and ended.step < 150
        await api.settled()
        for event in api.events:
            if isinstance(event, Queued):  # the second, queued job was cancelled too
                job = await api.storage.get_job(event.job.id)
                assert job.status == "cancelled" and job.delivered, job
        async with aiohttp.ClientSession() as again:  # the worker is free
            assert (await post(again, api.url, T2I, {"prompt": "a dog"}))[0] == 200


async def test_stop_answers_waiting_calls_with_503(tiny_generator, tmp_path: Path) -> None:
    async with serving(tiny_generator, tmp_path) as api, aiohttp.ClientSession() as http:
        api.scheduler.pause()
        waiting = asyncio.create_task(post(http, api.url, T2I, {"prompt": "a cat"}))
        queued = await api.wait_for(lambda e: isinstance(e, Queued))
        await api.server.stop()
        status, _, body = await waiting
        assert status == 503 and "shutting down" in body["detail"]
        job = await api.storage.get_job(queued.job.id)
        assert job.status == "cancelled" and job.delivered


async def test_restart_ends_api_jobs_and_keeps_discord_ones(tiny_generator, tmp_path) -> None:
    async with serving(tiny_generator, tmp_path) as api:
        store = api.storage
        request = GenerationRequest(prompt="a cat")
        api_job = await store.create_job(NewJob(user_id=-5, work=request, reference={"api": "x"}))
        done = await store.create_job(NewJob(user_id=-5, work=request, reference={"api": "x"}))
        await store.set_job_status(done.id, "finished", result={})
        discord = await store.create_job(NewJob(user_id=7, work=request, reference={"token": "t"}))
        assert await end_orphaned_jobs(store) == 2
        for job_id, status in ((api_job.id, "cancelled"), (done.id, "finished")):
            job = await store.get_job(job_id)
            assert job.status in (status, "done") and job.delivered and job.error == RESTART_ERROR
        assert (await store.get_job(discord.id)).status == "queued"


@pytest.mark.parametrize("host", ["0.0.0.0"])
async def test_exposed_without_credentials_is_refused(tiny_generator, tmp_path, host) -> None:
    from webapi.server import ApiRefused

    with pytest.raises(ApiRefused, match="API_AUTH"):
        async with serving(tiny_generator, tmp_path, host=host):
            pass
