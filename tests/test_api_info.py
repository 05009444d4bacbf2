"""The web-UI API's read and control endpoints over 127.0.0.1: a real server, SQLite, tiny model."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from engine.config import AppConfig, ModelConfig, QueueConfig
from engine.front_door import EngineDoor
from engine.generator import TextToImageGenerator
from engine.metadata import format_parameters, png_info
from engine.requests import GenerationRequest
from engine.schedulers import SCHEDULER_NAMES
from scheduling.events import Cancelled, Finished, Progress
from scheduling.executor import build_scheduler
from scheduling.jobs import NewJob
from scheduling.scheduler import Scheduler
from storage import Storage
from tests.conftest import tiny_config
from tests.test_executor import Recorder
from webapi.app import build_app
from webapi.catalog import sampler_for
from webapi.context import ApiContext, ApiUser, api_user_id
from webapi.options import caller_model
from webapi.payloads import parse_request
from webapi.settings import ApiSettings

ALICE = aiohttp.BasicAuth("alice", "pw-a")
BOB = aiohttp.BasicAuth("bob", "pw-b")
DISCORD_USER = 4242


class PreviewGate:
    """Holds the engine thread in the second preview after arm(), so a job is surely running
    with its first step (and preview) reported."""

    def __init__(self, preview: Any) -> None:
        self._preview = preview
        self._lock = threading.Lock()
        self._calls = 0
        self._armed = False
        self.entered = threading.Event()
        self._release = threading.Event()

    def arm(self) -> None:
        with self._lock:
            self._calls, self._armed = 0, True
            self.entered, self._release = threading.Event(), threading.Event()

    def release(self) -> None:
        with self._lock:
            self._release.set()

    def __call__(self, latents: Any, max_side: int = 128) -> Any:
        image = self._preview(latents, max_side)
        hold = None
        with self._lock:
            if self._armed:
                self._calls += 1
                if self._calls == 2:
                    self._armed = False
                    hold = (self.entered, self._release)
        if hold is not None:
            hold[0].set()
            hold[1].wait(30)
        return image

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "no job reached the gate"


@dataclass
class Api:
    """A served API: its base URL, services, the recorder of job events and the gate."""

    url: str
    context: ApiContext
    rec: Recorder
    gate: PreviewGate
    db: Path

    @property
    def scheduler(self) -> Scheduler:
        return self.context.scheduler

    async def submit(self, user_id: int, prompt: str = "a red castle") -> int:
        job = await self.scheduler.submit(
            NewJob(user_id=user_id, work=GenerationRequest(prompt, seed=1))
        )
        return job.id

    async def get(self, path: str, auth: aiohttp.BasicAuth | None = ALICE, **kw: Any) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, auth=auth, **kw) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()

    async def post(
        self, path: str, body: Any = None, auth: aiohttp.BasicAuth | None = ALICE
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + path, json=body, auth=auth) as response,
        ):
            return response.status, await response.json()


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path):
    """The tiny model under two MODEL_CHOICES names (the second never needs loading here)."""
    folder = tiny_model_dir
    base = tiny_config(folder)
    model = ModelConfig(
        model_id=str(folder), device="cpu", precision="fp32", choices=f"tiny={folder},twin={folder}"
    )
    gen = TextToImageGenerator(AppConfig(**{**dict(base), "model": model}))
    gen.load_model()
    yield gen
    gen.unload()


@contextlib.asynccontextmanager
async def serve(
    generator: TextToImageGenerator, tmp_path: Path, db: Path, auth: str | None
) -> AsyncIterator[Api]:
    """The API on a fresh scheduler and SQLite store, on a free port of 127.0.0.1."""
    gate = PreviewGate(generator.preview)
    generator.preview = gate  # type: ignore[method-assign]
    storage = await Storage.open(db)
    queue = QueueConfig(progress_interval_s=0, previews=True, per_user_cap=10)
    scheduler = build_scheduler(
        generator, storage, queue, image_path=lambda j, i: tmp_path / f"job{j.id}-{i}.png"
    )
    rec = Recorder()
    scheduler.subscribe(rec)
    await scheduler.start()
    door = EngineDoor(generator, scheduler.run_on_engine)
    settings = ApiSettings(enabled=True, host="127.0.0.1", port=7860, auth=auth)
    context = ApiContext(scheduler, storage, door, generator.config, settings)
    runner = web.AppRunner(build_app(context))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Api(f"http://127.0.0.1:{port}", context, rec, gate, db)
    finally:
        gate.release()
        await runner.cleanup()
        await scheduler.stop()
        await storage.close()
        del generator.preview


@pytest.fixture
async def api(generator: TextToImageGenerator, tmp_path: Path) -> AsyncIterator[Api]:
    async with serve(
        generator, tmp_path, tmp_path / "bot.sqlite3", "alice:pw-a,bob:pw-b"
    ) as served:
        yield served


async def test_credentials_are_required_when_api_auth_is_set(api: Api) -> None:
    async with aiohttp.ClientSession() as session:
        for auth in (None, aiohttp.BasicAuth("alice", "wrong"), aiohttp.BasicAuth("eve", "pw-a")):
            async with session.get(api.url + "/sdapi/v1/sd-models", auth=auth) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic")
        async with session.post(api.url + "/sdapi/v1/interrupt") as response:
            assert response.status == 401
    assert [m["title"] for m in await api.get("/sdapi/v1/sd-models", auth=BOB)] == ["tiny", "twin"]


async def test_catalogue_endpoints_answer_in_the_web_ui_shapes(api: Api, tmp_path: Path) -> None:
    storage, door = api.context.storage, api.context.door
    models = await api.get("/sdapi/v1/sd-models")
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models[0])
    assert models[0]["filename"] == "tiny-sd"  # a local folder by its name, not its full path
    samplers = await api.get("/sdapi/v1/samplers")
    assert [s["name"] for s in samplers] == list(SCHEDULER_NAMES)
    by_name = {s["name"]: s for s in samplers}
    assert by_name["Euler a"]["aliases"] == ["k_euler_a"]
    assert by_name["DPM++ 2M Karras"]["options"]["scheduler"] == "karras"
    assert [s["name"] for s in await api.get("/sdapi/v1/schedulers")] == ["automatic", "karras"]
    assert sampler_for("DPM++ 2M", "Karras") == "DPM++ 2M Karras"
    assert sampler_for("k_euler_a") == "Euler a" and sampler_for("DPM++ SDE") == "DPM++ SDE Karras"
    with pytest.raises(ValueError, match=r"^scheduler"):
        sampler_for("Euler", "Karras")

    await storage.loras.add_lora("shared_one", path="loras/a", trigger_word="sks", rank=4)
    await storage.loras.add_lora("training", path="loras/b", status="training")
    await storage.loras.add_lora("private", path="loras/c", owner_id=DISCORD_USER, shared=False)
    loras = await api.get("/sdapi/v1/loras")
    assert [(x["name"], x["alias"], x["path"]) for x in loras] == [
        ("shared_one", "shared_one", "loras/a")
    ]
    assert loras[0]["metadata"] == {"trigger_word": "sks", "rank": 4}

    width = door.resident_width
    assert width is not None
    await storage.embeddings.add("fits", path="e/a.pt", vectors=2, width=width, base_model="tiny")
    await storage.embeddings.add("other", path="e/b.pt", vectors=1, width=768)
    embeddings = await api.get("/sdapi/v1/embeddings")
    assert embeddings["loaded"] == {
        "fits": {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": "tiny",
            "shape": width,
            "vectors": 2,
        }
    }
    assert list(embeddings["skipped"]) == ["other"]

    assert [u["name"] for u in await api.get("/sdapi/v1/upscalers")] == ["None", "Lanczos"]
    assert await api.get("/sdapi/v1/scripts") == {"txt2img": [], "img2img": []}
    assert await api.get("/sdapi/v1/sd-vae") == []
    flags = await api.get("/sdapi/v1/cmd-flags")
    assert flags["api"] is True and flags["listen"] is False and flags["port"] == 7860
    assert flags["api_auth"] == "***" and flags["vram_preset"] == door.preset
    assert flags["model_choices"] == ["tiny", "twin"]
    memory = await api.get("/sdapi/v1/memory")
    assert memory["ram"]["total"] >= memory["ram"]["free"] > 0 and memory["ram"]["used"] > 0
    assert "error" in memory["cuda"] or memory["cuda"]["system"]["total"] > 0
    for name in ("refresh-checkpoints", "refresh-loras", "refresh-embeddings"):
        assert await api.post(f"/sdapi/v1/{name}") == (200, None)


def _b64_png(parameters: str | None = None, size: tuple[int, int] = (8, 8)) -> str:
    buffer = io.BytesIO()
    info = png_info(parameters) if parameters else None
    Image.new("RGB", size, "red").save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


async def test_png_info_reads_parameters_and_names_a_bad_image(api: Api) -> None:
    text = format_parameters(
        prompt="a red castle",
        negative_prompt="blurry",
        steps=7,
        sampler="Euler a",
        cfg_scale=6.5,
        seed=42,
        width=64,
        height=96,
        model="tiny",
    )
    status, answer = await api.post("/sdapi/v1/png-info", {"image": _b64_png(text)})
    assert status == 200 and answer["info"] == text and answer["items"] == {}
    parsed = answer["parameters"]
    assert (parsed["Prompt"], parsed["Negative prompt"]) == ("a red castle", "blurry")
    assert (parsed["Steps"], parsed["Sampler"], parsed["Seed"]) == ("7", "Euler a", "42")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "96")
    data_url = "data:image/png;base64," + _b64_png()
    assert await api.post("/sdapi/v1/png-info", {"image": data_url}) == (
        200,
        {"info": "", "items": {}, "parameters": {}},
    )
    not_image = base64.b64encode(b"plain words").decode()
    for body in ({}, {"image": "@@not base64@@"}, {"image": not_image}, {"image": 5}):
        status, answer = await api.post("/sdapi/v1/png-info", body)
        assert status == 422 and answer["detail"][0]["loc"] == ["body", "image"], answer


async def test_extra_single_image_enlarges_and_names_a_bad_field(api: Api) -> None:
    source = _b64_png("a red castle\nSteps: 7, Seed: 42", size=(24, 16))
    body = {"image": source, "upscaler_1": "lanczos", "upscaling_resize": 2}
    status, answer = await api.post("/sdapi/v1/extra-single-image", body)
    assert status == 200, answer
    with Image.open(io.BytesIO(base64.b64decode(answer["image"]))) as big:
        assert big.size == (48, 32) and big.getpixel((20, 10)) == (255, 0, 0)
        assert big.info["parameters"].startswith("a red castle")  # the source's parameters kept
    status, answer = await api.post(
        "/sdapi/v1/extra-single-image",
        {
            "image": source,
            "resize_mode": 1,
            "upscaling_resize_w": 40,
            "upscaling_resize_h": 30,
            "upscaler_1": "Lanczos",
        },
    )
    assert status == 200
    with Image.open(io.BytesIO(base64.b64decode(answer["image"]))) as scaled:
        assert scaled.size == (40, 30)
    status, answer = await api.post("/sdapi/v1/extra-single-image", {"image": source})
    with Image.open(io.BytesIO(base64.b64decode(answer["image"]))) as same:
        assert same.size == (24, 16)  # upscaler_1 defaults to None, as in the web UI
    for bad, field in (
        ({"image": source, "upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({"image": source, "upscaler_1": "Lanczos", "upscaling_resize": 9}, "upscaling_resize"),
        (
            {"image": _b64_png(size=(1024, 8)), "upscaler_1": "Lanczos", "upscaling_resize": 5},
            "upscaling_resize",
        ),
        ({"image": source, "resize_mode": 2}, "resize_mode"),
        ({"upscaler_1": "Lanczos"}, "image"),
    ):
        status, answer = await api.post("/sdapi/v1/extra-single-image", bad)
        assert status == 422 and answer["detail"][0]["loc"] == ["body", field], answer
    # The model path runs on the engine's thread between jobs (Lanczos here: no GEN_UPSCALER).
    with Image.open(io.BytesIO(base64.b64decode(source))) as opened:
        enlarged = await api.context.door.enlarge(opened.convert("RGB"), (36, 24))
    assert enlarged.size == (36, 24)


async def test_options_switch_the_model_per_caller_and_survive_a_restart(
    api: Api, generator: TextToImageGenerator, tmp_path: Path
) -> None:
    options = await api.get("/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == "tiny"
    assert (options["sd_vae"], options["samples_format"]) == ("Automatic", "png")
    assert options["CLIP_stop_at_last_layers"] == 1
    status, answer = await api.post("/sdapi/v1/options", {"sd_model_checkpoint": "nope"})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
    assert "tiny, twin" in answer["detail"][0]["msg"]
    status, answer = await api.post(
        "/sdapi/v1/options",
        {"sd_model_checkpoint": "TWIN.safetensors [0a1b2c3d]", "jpeg_quality": 5},
    )
    assert (status, answer) == (200, None)
    assert (await api.get("/sdapi/v1/options"))["sd_model_checkpoint"] == "twin"
    assert (await api.get("/sdapi/v1/options", auth=BOB))["sd_model_checkpoint"] == "tiny"
    assert await caller_model(api.context, ApiUser.named("bob")) is None
    # txt2img takes the caller's choice when the call names no checkpoint of its own.
    body = {"prompt": "a cat"}
    alice = await parse_request(api.context, ApiUser.named("alice"), body, img2img=False)
    bob = await parse_request(api.context, ApiUser.named("bob"), body, img2img=False)
    assert (alice.job_request(0).model, bob.job_request(0).model) == ("twin", None)
    status, _ = await api.post("/sdapi/v1/options", ["not", "an", "object"])
    assert status == 422
    # A new Storage on the same file (as after a restart) still knows alice's choice.
    reopened = await Storage.open(api.db)
    try:
        restarted = dataclasses.replace(api.context, storage=reopened)
        assert await caller_model(restarted, ApiUser.named("alice")) == "twin"
        profile = await reopened.users.get_user(api_user_id("alice"))
        assert profile is not None and profile.model == "twin" and profile.user_id < 0
    finally:
        await reopened.close()


async def test_progress_reports_the_callers_running_and_waiting_jobs(api: Api) -> None:
    idle = await api.get("/sdapi/v1/progress")
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    assert idle["current_image"] is None
    alice, bob = api_user_id("alice"), api_user_id("bob")
    api.gate.arm()
    first = await api.submit(alice)
    second = await api.submit(alice)
    await api.gate.wait_entered()
    await api.rec.wait(Progress, first)
    waiting_bob = await api.submit(bob)

    mine = await api.get("/sdapi/v1/progress")
    state = mine["state"]
    # held in step 2's preview: two steps done (the engine's count), step 1's preview shown
    assert (state["sampling_step"], state["sampling_steps"]) == (2, 3)
    assert (state["job_count"], state["job_no"], state["job"]) == (2, 0, "txt2img")
    assert 0 < mine["progress"] < 0.5 and mine["eta_relative"] > 0
    assert "step 2/3" in mine["textinfo"] and "1 more" in mine["textinfo"]
    preview = Image.open(io.BytesIO(base64.b64decode(mine["current_image"])))
    assert preview.format == "PNG" and max(preview.size) <= 128
    assert (await api.get("/sdapi/v1/progress?skip_current_image=true"))["current_image"] is None

    theirs = await api.get("/sdapi/v1/progress", auth=BOB)
    assert theirs["state"]["job_count"] == 1 and theirs["state"]["sampling_steps"] == 0
    place = api.scheduler.position(waiting_bob)
    assert theirs["current_image"] is None and f"place {place}" in theirs["textinfo"]
    async with aiohttp.ClientSession() as session:
        url = api.url + "/sdapi/v1/progress?skip_current_image=maybe"
        async with session.get(url, auth=ALICE) as response:
            assert response.status == 422
            assert (await response.json())["detail"][0]["loc"] == ["body", "skip_current_image"]

    api.gate.release()
    await api.rec.wait(Finished, first)
    later = await api.get("/sdapi/v1/progress")
    if later["state"]["job_count"]:  # the second job still runs or waits: one of two is done
        assert later["state"]["job_no"] == 1 and later["progress"] >= 0.5
    for job in (second, waiting_bob):
        await api.rec.wait(Finished, job)
    assert (await api.get("/sdapi/v1/progress"))["state"]["job_count"] == 0


async def test_interrupt_stops_only_the_callers_jobs(api: Api) -> None:
    alice, bob = api_user_id("alice"), api_user_id("bob")
    assert alice != bob and alice < 0 and bob < 0
    api.gate.arm()
    running = await api.submit(alice)
    await api.gate.wait_entered()
    discord = await api.submit(DISCORD_USER)
    waiting = [await api.submit(alice), await api.submit(alice)]
    bobs = await api.submit(bob)
    # Bob's interrupt stops bob's job and nothing of alice's or the Discord user's.
    assert await api.post("/sdapi/v1/interrupt", auth=BOB) == (200, {})
    await api.rec.wait(Cancelled, bobs)
    assert [run.cancel.is_set() for run in api.scheduler.active.all()] == [False]
    assert [job.id for job in api.scheduler.snapshot().waiting] == [discord, *waiting]
    assert await api.post("/sdapi/v1/interrupt") == (200, {})
    for job in waiting:
        (event,) = await api.rec.wait(Cancelled, job)
        assert not event.was_running
    api.gate.release()
    (event,) = await api.rec.wait(Cancelled, running)
    assert event.was_running
    await api.rec.wait(Finished, discord)
    assert api.rec.of(Cancelled, discord) == []
    state = (await api.get("/sdapi/v1/progress"))["state"]
    assert state["interrupted"] is True and state["job_count"] == 0
    stored = await api.context.storage.get_job(running)
    assert stored is not None and stored.status == "cancelled"


async def test_skip_stops_only_the_callers_running_job(api: Api) -> None:
    alice = api_user_id("alice")
    api.gate.arm()
    discord = await api.submit(DISCORD_USER)
    await api.gate.wait_entered()
    first, second = await api.submit(alice), await api.submit(alice)
    # Alice has nothing running: her skip must not touch the Discord user's running job.
    assert await api.post("/sdapi/v1/skip") == (200, None)
    api.gate.release()
    api.gate.arm()
    await api.rec.wait(Finished, discord)
    await api.gate.wait_entered()  # alice's first job is running now
    assert await api.post("/sdapi/v1/skip") == (200, None)
    api.gate.release()
    (event,) = await api.rec.wait(Cancelled, first)
    assert event.was_running
    await api.rec.wait(Finished, second)  # the rest of her batch goes on
    assert api.rec.of(Cancelled, discord) == []


async def test_an_open_api_serves_everyone_as_one_queue_user(
    generator: TextToImageGenerator, tmp_path: Path
) -> None:
    async with serve(generator, tmp_path, tmp_path / "open.sqlite3", None) as api:
        assert (await api.get("/sdapi/v1/options", auth=None))["sd_model_checkpoint"] == "tiny"
        assert await api.post("/sdapi/v1/options", {"sd_model_checkpoint": "twin"}, auth=None) == (
            200,
            None,
        )
        assert await caller_model(api.context, ApiUser.named("api")) == "twin"
