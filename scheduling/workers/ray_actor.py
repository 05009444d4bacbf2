"""The worker that runs inside a Ray actor process: one device, the same core as the local thread.

A plain class (Ray wraps it in ``ray_backend``), so this module does not import Ray.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config import AppConfig, QueueConfig
from engine.errors import EngineError, GenerationCancelled, RequestError
from engine.generator import TextToImageGenerator
from engine.metadata import png_info
from scheduling.jobs import JobRecord
from scheduling.workers.base import JobRun
from scheduling.workers.core import GenerationCore, OutOfMemoryExhausted
from scheduling.workers.training_site import TrainingSite


def encode_png(image: Any, parameters: str | None = None) -> bytes:
    """A PIL image as PNG bytes, with its parameters chunk when given."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(parameters) if parameters else None)
    return buffer.getvalue()


class _Reports:
    """The latest progress of each job on this actor, polled by the scheduler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[int, dict[str, Any]] = {}

    def progress(self, run: JobRun, step: int, total: int, preview: Any) -> None:
        """Keep the newest step (and preview as PNG bytes) until the next poll."""
        png = encode_png(preview) if preview is not None else None
        with self.lock:
            entry = self.state.setdefault(run.job.id, {"notices": []})
            entry.update(step=step, total=total, preview=png)

    def notice(self, run: JobRun, message: str) -> None:
        """Queue a message for the user until the next poll."""
        with self.lock:
            self.state.setdefault(run.job.id, {"notices": []})["notices"].append(message)

    def take(self, job_id: int) -> dict[str, Any]:
        """What happened since the last poll."""
        with self.lock:
            entry = self.state.get(job_id, {"notices": []})
            out = dict(entry)
            entry["notices"] = []
            entry["preview"] = None
        return out


class WorkerActor:
    """Loads the model once and runs generate jobs sent by the scheduler."""

    def __init__(self, index: int, app_config: dict[str, Any], cache_dir: str) -> None:
        self.index = index
        config = AppConfig.model_validate(app_config)
        self.generator = TextToImageGenerator(config)
        self.generator.load_model()
        self.core = GenerationCore(self.generator, QueueConfig.model_validate(app_config["queue"]))
        self.cache = Path(cache_dir).expanduser() / f"sd-worker-{index}"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.reports = _Reports()
        self.runs: dict[int, JobRun] = {}
        self.training = TrainingSite(self.cache, self.generator)
        self.jobs_done = 0
        self.seconds_per_step: float | None = None

    def info(self) -> dict[str, Any]:
        """Node, device, preset, process id and counters."""
        import ray  # only ever called inside a Ray actor

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.generator.device),
            "preset": str(self.generator.preset),
            "jobs_done": self.jobs_done,
            "seconds_per_step": self.seconds_per_step,
            "running": sorted(self.runs),
        }

    def _file(self, name: str) -> Path:
        sha, _, suffix = name.partition(".")
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha) or "/" in suffix:
            raise ValueError(f"not a cache name (sha256 + suffix): {name!r}")
        return self.cache / name

    def has_file(self, name: str) -> bool:
        """Whether the file with this cache name (sha256 + suffix) is on this actor's disk."""
        return self._file(name).is_file()

    def put_file(self, name: str, data: bytes) -> str:
        """Store a file sent by the scheduler, after checking its hash; return its local path."""
        path = self._file(name)
        if hashlib.sha256(data).hexdigest() != name.partition(".")[0]:
            raise ValueError(f"{name[:12]}: the bytes received do not match their sha256")
        tmp = path.with_name(f".{name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return str(path)

    def has_lora(self, sha: str) -> bool:
        """Whether the LoRA with this sha256 is in the disk cache."""
        return self.has_file(f"{sha}.safetensors")

    def generate(
        self,
        job: JobRecord,
        lora_sha: str | None,
        init_name: str | None = None,
        stack: list[list[Any]] | None = None,
        mask_name: str | None = None,
    ) -> dict[str, Any]:
        """Run one generate job; images come back as PNG bytes, errors as a small dict.

        The LoRAs, the source image and its mask are read from this actor's cache, never from the bot's
        paths in the request (the bot's disk may be on another machine).
        """
        request = job.request
        if lora_sha:
            request = replace(request, lora=str(self._file(f"{lora_sha}.safetensors")))
        if init_name:
            request = replace(request, init_image=str(self._file(init_name)))
        if mask_name:
            request = replace(request, mask_image=str(self._file(mask_name)))
        if stack:  # [cache name, weight, display name] for each LoRA of the prompt
            loras = [[str(self._file(c)), weight, name] for c, weight, name in stack]
            request = replace(request, loras=loras)
        record = replace(job, work=request)
        run = JobRun(record)
        self.runs[record.id] = run
        try:
            result, level = self.core.run(run, self.reports)
        except GenerationCancelled:
            return {"error": "cancelled", "step": run.step}
        except OutOfMemoryExhausted as exc:
            return {"error": "oom", "message": str(exc)}
        except (EngineError, RequestError) as exc:  # words for users; anything else is logged
            return {"error": "engine", "message": str(exc)}
        finally:
            self.runs.pop(record.id, None)
            with self.reports.lock:
                self.reports.state.pop(record.id, None)
        self.jobs_done += 1
        self.seconds_per_step = result.seconds_per_step
        pngs = [encode_png(im, t) for im, t in zip(result.images, result.parameters, strict=True)]
        return {"pngs": pngs, "data": self.core.result_data(result, level)}

    def progress(self, job_id: int) -> dict[str, Any]:
        """Steps done, a preview and notices since the last poll."""
        return self.reports.take(job_id)

    def cancel(self, job_id: int) -> bool:
        """Stop this job at its next step; False if it does not run here."""
        run = self.runs.get(job_id)
        if run is None:
            return False
        run.cancel.set()
        return True

    # ----- training (the bot drives it call by call, see scheduling.workers.ray_training) -----
    def train_begin(
        self,
        job_id: int,
        params: dict[str, Any],
        dataset: dict[str, str],
        checkpoint: tuple[int, dict[str, str]] | None,
    ) -> int:
        """Set up a training from cached files (by cache name); return the step it resumes at."""
        paths = {name: self._file(cached) for name, cached in dataset.items()}
        resume = None
        if checkpoint is not None:
            step, parts = checkpoint
            resume = (step, {name: self._file(cached) for name, cached in parts.items()})
        return self.training.begin(job_id, params, paths, resume)

    def train_call(self, job_id: int, method: str, *args: Any) -> Any:
        """One call on a training: train_steps, suspend, resume, finish or abort."""
        return self.training.call(job_id, method, *args)

    def train_cancel(self, job_id: int) -> bool:
        """Stop the training's current slice at its next step."""
        return self.training.cancel(job_id)

    def train_checkpoints(self, job_id: int, after: int) -> list[tuple[int, dict[str, bytes]]]:
        """Checkpoints newer than step `after`, as file bytes."""
        return self.training.checkpoints(job_id, after)

    def train_final(self, job_id: int) -> dict[str, bytes]:
        """The finished LoRA's files; the job's folder is removed afterwards by train_clear."""
        return self.training.final_files(job_id)

    def train_clear(self, job_id: int) -> None:
        """Drop the job's training folder."""
        self.training.clear(job_id)
