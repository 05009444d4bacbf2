"""EngineDoor: what the bot may ask of the engine (LoRAs, embeddings, models, sizes), in one place.

The pipeline is the engine's alone: whatever touches it runs through `between_jobs`, which the
bot wires to its job system so that it runs between two jobs on the engine's thread.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engine import img2img
from engine.adapters import draft_lora_missing
from engine.embeddings import EmbeddingInfo
from engine.errors import EngineError, LoraError, LoraMismatchError, RequestError
from engine.generator import TextToImageGenerator
from engine.lora import LoraFileInfo, adapter_name_for, inspect_lora_file
from engine.requests import GenerationRequest, ResolvedRequest, native_size

log = logging.getLogger(__name__)

# between_jobs(fn, *args) runs fn(*args) on the engine's thread between jobs and returns its value.
BetweenJobs = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class LoraFit:
    """A LoRA file that loaded into the resident model: what it holds and the model it fits."""

    info: LoraFileInfo
    model: str
    width: int | None


@dataclass(frozen=True)
class EmbeddingFit:
    """An embedding loaded into the resident model: its vectors and the model it was loaded into."""

    info: EmbeddingInfo
    model: str


class EngineDoor:
    """The cogs' way into the engine: check, register and forget adapters; model info and sizes."""

    def __init__(self, generator: TextToImageGenerator, between_jobs: BetweenJobs) -> None:
        self._generator = generator
        self._between_jobs = between_jobs

    # ----- upscaling -----------------------------------------------------------------------
    async def enlarge(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The image at ``size`` through the GEN_UPSCALER model (Lanczos without one)."""
        return await self._between_jobs(self._enlarge, image, size)

    def _enlarge(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        return img2img.enlarge(image, size, self._generator.upscaler())

    # ----- LoRAs ---------------------------------------------------------------------------
    async def check_lora(self, path: Path) -> LoraFit:
        """Read a LoRA file's header, then load it into the resident model once and unload it.

        LoraError when the file is not a LoRA; LoraMismatchError (naming the model) when it is
        one but does not load into the resident model; EngineError when no model is loaded.
        """
        info = await asyncio.to_thread(inspect_lora_file, path)
        model, width = await self._between_jobs(self._try_load, path)
        return LoraFit(info, model, width)

    def _try_load(self, path: Path) -> tuple[str, int | None]:
        generator = self._generator
        manager = generator.lora
        if manager is None:
            raise EngineError("The model is not loaded; try again once the bot is ready.")
        model = generator.model_name
        try:
            # A name of its own, so a resident adapter of the same LoRA name stays untouched.
            adapter = manager.load(path, f"check_{uuid.uuid4().hex[:8]}")
        except LoraError as exc:
            raise LoraMismatchError(exc.problem, path.name, model) from exc
        manager.unload(adapter)
        return model, generator.text_width

    async def forget_lora(self, name: str) -> None:
        """Drop the resident adapter of this LoRA name, so the name is read from its file again.

        Called when a LoRA is deleted or (re)installed under a name: stale weights must not
        stand in for the new file.
        """
        await self._between_jobs(self._forget_lora, name)

    def _forget_lora(self, name: str) -> None:
        if self._generator.lora is not None:
            self._generator.lora.unload(adapter_name_for(name))

    # ----- embeddings ----------------------------------------------------------------------
    async def add_embedding(self, path: Path, name: str) -> EmbeddingFit:
        """Load a new embedding under `name`; EmbeddingError when it does not fit the model."""
        return await self._between_jobs(self._add_embedding, path, name)

    def _add_embedding(self, path: Path, name: str) -> EmbeddingFit:
        info = self._generator.load_embedding(path, name)
        return EmbeddingFit(info, self._generator.model_name)

    async def restore_embedding(self, path: Path, name: str) -> None:
        """Load a registered embedding at start-up; one refused for its width is still loaded
        after a switch to a model it fits (EmbeddingError or OSError tell why it is not now)."""
        await self._between_jobs(self._restore_embedding, path, name)

    def _restore_embedding(self, path: Path, name: str) -> None:
        self._generator.load_embedding(path, name, remember_unfit=True)

    async def forget_embedding(self, name: str) -> bool:
        """Unload an embedding (its name is a plain word again); False when it was not loaded."""
        return await self._between_jobs(self._generator.unload_embedding, name)

    # ----- images made beside the queue ---------------------------------------------------
    async def before_after_png(
        self, prompt: str, seed: int, size: int, lora_path: str, lora_name: str
    ) -> bytes:
        """PNG of `prompt` without and with a LoRA, side by side (a new LoRA's proof)."""
        return await self._between_jobs(
            self._before_after, prompt, seed, size, lora_path, lora_name
        )

    def _before_after(
        self, prompt: str, seed: int, size: int, lora_path: str, lora_name: str
    ) -> bytes:
        from engine.training.compare import before_after_png

        return before_after_png(
            self._generator, prompt, seed=seed, size=size, lora_path=lora_path, lora_name=lora_name
        )

    # ----- models --------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Every model the owner allows (MODEL_CHOICES), the default first."""
        return self._generator.models.names()

    def find_model(self, name: str) -> str | None:
        """The canonical name of an allowed model (any letter case), or None."""
        choice = self._generator.models.find(name)
        return None if choice is None else choice.name

    @property
    def default_model(self) -> str:
        """The name of the startup model (MODEL_ID)."""
        return self._generator.models.default

    def model_width(self, name: str) -> int | None:
        """The text-encoder width (architecture family) of an allowed model; None when unknown."""
        return self._generator.models.width(name)

    def inpaint_partner(self, name: str) -> str | None:
        """The allowed 9-channel inpainting model of a 4-channel model's family, or None."""
        generator = self._generator
        return generator.models.inpaint_partner(name, generator.config.model.allow_ckpt)

    @property
    def resident_model(self) -> str:
        """The name of the model loaded now ('' before the first load)."""
        return self._generator.model_name

    @property
    def resident_width(self) -> int | None:
        """The loaded text encoder's width (768 SD 1.x, 1024 SD 2.x); None when none is loaded."""
        return self._generator.text_width

    @property
    def preset(self) -> str:
        """The VRAM preset in use ('2gb' … '8gb', 'none')."""
        return self._generator.preset

    @property
    def device(self) -> str:
        """The device the bot's own pipeline runs on."""
        return self._generator.device

    def native_size(self) -> tuple[int, int]:
        """Width and height of a default image: GEN_WIDTH/GEN_HEIGHT when set, else the model's."""
        return native_size(self._generator.config.generation, self._generator.model_defaults)

    def draft_by_default(self, model: str | None = None) -> bool:
        """Whether /imagine without a `draft` option makes a draft on `model` (None: loaded)."""
        return self._generator.draft_by_default(model)

    def prepare(self, request: GenerationRequest) -> ResolvedRequest:
        """Validate a request and fill its defaults (RequestError naming the bad field).

        An explicit draft is refused here, before anything is queued, when its LoRA is neither
        on this machine nor downloadable (the owner's fix goes to the log); a default one has
        already fallen back to full quality.
        """
        resolved = self._generator.prepare(request)
        if resolved.draft:
            problem = draft_lora_missing(
                self._generator.config, self._generator.adapters.model_folder
            )
            if problem is not None:
                log.warning("draft refused: %s", problem)
                raise RequestError(
                    "draft",
                    "drafts are not available on this bot now (their LoRA is not on this "
                    "machine); leave draft off",
                )
        return resolved
