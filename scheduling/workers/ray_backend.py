"""The Ray backend: one actor per GPU (``sd-worker-<N>`` in namespace ``sd-discord-bot``).

Imported only when WORKERS_BACKEND=ray. The scheduler stays in the bot; each RayWorker here is
the bot-side handle of one actor: it ships LoRAs by sha256, polls progress, forwards cancel and
saves the PNG bytes that come back.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray

from engine.config import AppConfig, QueueConfig
from engine.errors import EngineError, GenerationCancelled
from engine.lora import lora_display_name, resolve_lora_file
from engine.metadata import save_png_bytes
from engine.requests import GenerationRequest, GenerationResult, ResolvedRequest
from scheduling.disk import saving
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun, ProgressSink, WorkerInfo, WorkerLost
from scheduling.workers.core import OutOfMemoryExhausted
from scheduling.workers.ray_actor import WorkerActor
from scheduling.workers.ray_calls import LOST, get
from scheduling.workers.ray_training import RemoteTrainer

log = logging.getLogger(__name__)

NAMESPACE = "sd-discord-bot"
ACTOR_PREFIX = "sd-worker-"


def connect(address: str = "") -> bool:
    """Join the Ray cluster at address, or start a private one on 127.0.0.1; True if started."""
    if ray.is_initialized():
        return False
    if address:
        # An owner's cluster: Ray's own defaults apply (token from RAY_AUTH_TOKEN or its file).
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return True
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        namespace=NAMESPACE,
        logging_level=logging.WARNING,
    )
    return True


def create_workers(
    app_config: AppConfig,
    *,
    count: int | None = None,
    cache_dir: str | Path | None = None,
    num_cpus: float = 1,
    node_id: str | None = None,
) -> list[RayWorker]:
    """Start the worker actors: `count`, or one per GPU the cluster offers (else one).

    Each is named ``sd-worker-<N>`` with the lowest N not taken in the cluster already (by
    another bot, or by a test's own pool). With node_id, they are placed on that node if it
    has room.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    total = count or max(gpus, 1)
    options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": num_cpus}
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
    remote = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)(WorkerActor)
    cache = str(cache_dir or Path(tempfile.gettempdir()) / "sd-worker-cache")
    config = app_config.model_dump(mode="json")
    workers = []
    for index in _free_indexes(total):
        name = f"{ACTOR_PREFIX}{index}"
        handle = remote.options(name=name, namespace=NAMESPACE, **options).remote(
            index, config, cache
        )
        workers.append(RayWorker(name, handle, app_config, node_id=node_id))
    return workers


def _free_indexes(count: int) -> list[int]:
    """The first `count` worker numbers whose actor name nobody in the cluster uses yet."""
    free: list[int] = []
    index = 0
    while len(free) < count:
        try:
            ray.get_actor(f"{ACTOR_PREFIX}{index}", namespace=NAMESPACE)
        except ValueError:
            free.append(index)
        index += 1
    return free


class RayWorker:
    """The bot's handle on one worker actor."""

    supports_training = True  # whole trainings, driven by a RemoteTrainer (see trainer())
    shares_process = False  # an actor in another process, maybe on another PC

    def __init__(
        self, name: str, handle: Any, app_config: AppConfig, node_id: str | None = None
    ) -> None:
        self.name = name
        self.node_id = node_id  # the Ray node it runs on (from the actor once it answers)
        self.handle = handle
        self.app_config = app_config
        self.queue_config: QueueConfig = app_config.queue
        self.held_loras: set[str] = set()
        self.resident_model: str | None = None  # what the actor's last job ran on
        self.jobs_done = 0
        self._alive = False
        self._info: dict[str, Any] = {}
        self._shas: dict[tuple[str, int, int], str] = {}
        self._sent: set[str] = set()  # cache names the actor holds (sha256 + suffix)
        self.sent_bytes = 0  # file bytes shipped to the actor (LoRAs, source images)

    @property
    def alive(self) -> bool:
        """Whether the actor answered since it last died."""
        return self._alive

    @property
    def pid(self) -> int | None:
        """The actor's process id (as last reported)."""
        return self._info.get("pid")

    async def start(self) -> None:
        """Wait for the actor to load its model."""
        await self.wait_alive()

    async def wait_alive(self) -> None:
        """Poll the actor until it answers (Ray restarts it after a crash)."""
        while True:
            try:
                self._info = await get(self.handle.info.remote(), timeout=60)
            except (*LOST, asyncio.TimeoutError) as exc:
                log.info("%s not ready yet (%s)", self.name, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if not self._alive:
                log.info("%s ready on %s (%s)", self.name, self._info["node"], self._info["device"])
            self._alive = True
            self.node_id = self._info.get("node_id", self.node_id)
            self._sent.clear()  # a restarted actor still has its disk cache; has_lora says so
            return

    async def call(self, fn: Any, *args: Any) -> Any:
        """Not offered: remote workers run only whole jobs."""
        raise EngineError("this runs only on a local worker")

    async def trainer(self, job: JobRecord, factory: Any = None) -> RemoteTrainer:
        """A training of this job on this actor (set up by its setup()); the actor builds its
        own trainer, so ``factory`` (this process's) is not used."""
        return RemoteTrainer(self, job)

    def lost(self, exc: BaseException) -> WorkerLost:
        """The actor died under a call: not alive until wait_alive() hears from it; the error."""
        self._alive = False
        return WorkerLost(f"{self.name}: {type(exc).__name__}")

    async def ship(self, file: Path) -> str:
        """Put a file in the actor's disk cache once, by sha256; return its cache name."""
        return await self._ship(file, file.suffix.lower() or ".bin")

    async def generate(
        self, run: JobRun, sink: ProgressSink, image_path: Any
    ) -> tuple[GenerationResult, dict[str, Any]]:
        """Send the job to the actor, relay progress and cancel, save the PNG bytes it returns."""
        job = run.job
        request = job.request
        try:
            # 1. the LoRA and the source image, once per worker, by sha256
            sha = await self._ship_lora(request.lora) if request.lora else None
            stack = []
            for entry in request.loras or []:  # the prompt's <lora:…> tags, resolved
                name = entry[2] if len(entry) > 2 and entry[2] else lora_display_name(entry[0])
                cached = await self._ship(resolve_lora_file(entry[0]), ".safetensors")
                stack.append([cached, entry[1], name])
            init = mask = None
            if request.init_image:
                source = Path(request.init_image)
                init = await self._ship(source, source.suffix.lower() or ".png")
            if request.mask_image:  # a region job's mask travels the same way
                drawn = Path(request.mask_image)
                mask = await self._ship(drawn, drawn.suffix.lower() or ".png")
            # 2. run it, polling progress and forwarding cancel
            shipped = JobRecord(id=job.id, user_id=job.user_id, work=request)
            ref = self.handle.generate.remote(shipped, sha, init, stack or None, mask)
            out = await self._follow(ref, run, sink)
        except LOST as exc:
            raise self.lost(exc) from None
        # 3. outcome: errors as the local worker raises them, images saved by the bot
        error = out.get("error")
        if error == "cancelled":
            run.step = out.get("step", run.step)
            raise GenerationCancelled("cancelled on the worker")
        if error == "oom":
            raise OutOfMemoryExhausted(out["message"])
        if error:
            raise EngineError(out["message"])
        self.jobs_done += 1
        made = out["data"]
        self._info["seconds_per_step"] = made.get("seconds_per_step")
        if made.get("model") and made["model"] != self.resident_model:
            # A model switch on the actor dropped every adapter but this job's.
            self.held_loras = {str(request.lora)} if request.lora else set()
            self.resident_model = made["model"]
        # A full disk raises ImagesUnsaved: the PNG bytes stay in memory, saved again later.
        return await asyncio.to_thread(saving, lambda: self._save(job, out, image_path))

    async def _ship_lora(self, lora: str) -> str:
        file = resolve_lora_file(lora)
        name = await self._ship(file, ".safetensors")
        self.held_loras.add(str(lora))
        return name.removesuffix(".safetensors")

    async def _ship(self, file: Path, suffix: str) -> str:
        """Put a file in the actor's disk cache once, by sha256; return its name there."""
        stat = file.stat()
        key = (str(file), stat.st_mtime_ns, stat.st_size)
        sha = self._shas.get(key)
        data = None
        if sha is None:
            data = await asyncio.to_thread(file.read_bytes)
            sha = self._shas[key] = hashlib.sha256(data).hexdigest()
        name = f"{sha}{suffix}"
        if name not in self._sent:
            if not await get(self.handle.has_file.remote(name)):
                if data is None:
                    data = await asyncio.to_thread(file.read_bytes)
                log.info("%s: sending %s (%d bytes)", self.name, name[:12] + suffix, len(data))
                await get(self.handle.put_file.remote(name, ray.put(data)))
                self.sent_bytes += len(data)
            self._sent.add(name)
        return name

    async def _follow(self, ref: Any, run: JobRun, sink: ProgressSink) -> dict[str, Any]:
        future = asyncio.wrap_future(ref.future())
        interval = max(0.1, min(self.queue_config.progress_interval_s, 1.0))
        last = -1
        cancel_acked = False
        while True:
            done, _ = await asyncio.wait({future}, timeout=interval)
            if done:
                return future.result()
            if run.cancel.is_set() and not cancel_acked:
                cancel_acked = await get(self.handle.cancel.remote(run.job.id), timeout=30)
            try:
                report = await get(self.handle.progress.remote(run.job.id), timeout=30)
            except (*LOST, asyncio.TimeoutError):
                continue  # the job's own future says whether the actor died
            for message in report.get("notices", []):
                sink.notice(run, message)
            step = report.get("step", -1)
            if step > last:
                last = step
                run.step, run.total = step, report["total"]
                preview = _image(report["preview"]) if report.get("preview") else None
                sink.progress(run, step, report["total"], preview)

    def _save(
        self, job: Any, out: dict[str, Any], image_path: Any
    ) -> tuple[GenerationResult, dict[str, Any]]:
        data = dict(out["data"])
        paths: list[Path] = []
        for index, png in enumerate(out["pngs"]):
            if image_path is not None:
                path = Path(image_path(job, index))
            else:
                path = Path(self.app_config.generation.output_dir) / f"job{job.id}-{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            paths.append(save_png_bytes(png, path))
        data["paths"] = [str(p) for p in paths]
        resolved = _resolved(job.request, data["seeds"])
        result = GenerationResult(
            images=[_image(png) for png in out["pngs"]],
            seeds=data["seeds"],
            parameters=data["parameters"],
            request=resolved,
            seconds=data["seconds"],
            seconds_per_step=data["seconds_per_step"],
            warnings=data["warnings"],
            nsfw=data["nsfw"],
            paths=paths,
        )
        return result, data

    def info(self, current: JobRun | None) -> WorkerInfo:
        """This worker for /admin workers."""
        state = ("busy" if current is not None else "idle") if self._alive else "restarting"
        return WorkerInfo(
            name=self.name,
            node=str(self._info.get("node", "?")),
            device=str(self._info.get("device", "?")),
            preset=str(self._info.get("preset", "?")),
            state=state,
            current_job=None if current is None else current.job.id,
            jobs_done=self.jobs_done,
            seconds_per_step=self._info.get("seconds_per_step"),
        )

    async def close(self) -> None:
        """Stop the actor (it belongs to this bot)."""
        self._alive = False
        ray.kill(self.handle, no_restart=True)


def _image(png: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _resolved(request: GenerationRequest, seeds: list[int]) -> ResolvedRequest:
    """The stored request (fully decided at submit) as a ResolvedRequest."""
    return ResolvedRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or "",
        num_inference_steps=request.num_inference_steps or 1,
        guidance_scale=request.guidance_scale or 0.0,
        seeds=tuple(seeds),
        width=request.width or 512,
        height=request.height or 512,
        scheduler=request.scheduler or "",
        lora=request.lora,
        lora_name=request.lora_name,
        lora_scale=request.lora_scale or 1.0,
        draft=bool(request.draft),
        init_image=request.init_image,
        strength=request.strength,
        upscale=request.upscale,
        model=request.model,
        mask_image=request.mask_image,
        mask_region=request.mask_region,
        mask_blur=request.mask_blur,
        outpaint=request.outpaint,
    )
