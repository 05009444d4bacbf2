"""TextToImageGenerator: the engine's Python API (load, generate, save, LoRA, unload).

The generator composes three parts: `slot` (engine.model_slot: the resident model, its
optimizations and memory rungs), `adapters` (engine.adapters: LoRAs and embeddings) and the
functions of engine.outputs (parameters text, NSFW flags, PNG files). It keeps the request path:
prepare, run, generate and upscale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from engine import img2img, inpaint, outputs, step_cache, vae_tiles
from engine.adapters import Adapters
from engine.config import AppConfig
from engine.embeddings import EmbeddingInfo
from engine.errors import EngineError, GenerationCancelled, RequestError
from engine.init_image import UPSCALE_STRENGTH
from engine.lora import LoraManager
from engine.lora_stack import LoraResolver, folder_resolver, resolve_lora_stack
from engine.model_choices import ModelCatalog
from engine.model_slot import ModelSlot
from engine.optimizations import resolve_device
from engine.pipeline_call import pipeline_call
from engine.prompts import prompt_arguments
from engine.region import is_region_job
from engine.requests import GenerationRequest, GenerationResult, ResolvedRequest, resolve_request

log = logging.getLogger(__name__)

# progress(step, total, latents) is called after every denoising step on the engine thread.
ProgressCallback = Callable[[int, int, Any], None]

DRAFT_NOTE = "draft: negative prompts have little effect"
DRAFT_NO_NEGATIVE = "draft: the negative prompt is not used at CFG 1 (full quality uses it)"


class TextToImageGenerator:
    """A Stable Diffusion text-to-image pipeline with low-VRAM settings, LoRA and PNG metadata."""

    def __init__(
        self, config: AppConfig | None = None, lora_resolver: LoraResolver | None = None
    ) -> None:
        self.config = config or AppConfig()
        # Names in <lora:name:w> tags -> files; default: folders under STORAGE_LORA_DIR.
        self.lora_resolver: LoraResolver = lora_resolver or folder_resolver(
            self.config.generation.lora_dir
        )
        self.slot = ModelSlot(self.config)
        self.adapters = Adapters(self.config)
        self.last_result: GenerationResult | None = None
        self._upscale_model: img2img.ModelUpscaler | None = None

    # The resident model, as the bot and the workers see it (engine.model_slot has the rest).
    @property
    def loaded(self) -> bool:
        """Whether a model is loaded."""
        return self.slot.loaded

    @property
    def pipe(self) -> Any:
        """The loaded diffusers pipeline (None when no model is loaded)."""
        return self.slot.pipe

    @property
    def device(self) -> str:
        """The device the model runs on ("cuda", "cpu", ...)."""
        return self.slot.device

    @property
    def preset(self) -> str:
        """The VRAM preset in use ("none" before a model is loaded)."""
        return self.slot.preset

    @property
    def model_name(self) -> str:
        """The MODEL_CHOICES name of the loaded model ("" before one is loaded)."""
        return self.slot.model_name

    @property
    def models(self) -> ModelCatalog:
        """The models this engine may switch between (MODEL_ID and MODEL_CHOICES)."""
        return self.slot.models

    @property
    def model_defaults(self) -> dict[str, Any]:
        """The loaded model's own generation defaults (its engine_defaults.json)."""
        return self.slot.model_defaults

    @property
    def text_width(self) -> int | None:
        """The loaded text encoder's width (768 SD 1.x, 1024 SD 2.x): the architecture family."""
        return self.slot.text_width

    @property
    def memory_rungs(self) -> tuple[str, ...]:
        """The out-of-memory ladder that `set_memory_level` climbs."""
        return self.slot.memory_rungs

    @property
    def memory_floor(self) -> int:
        """The memory level the loaded model needed to fit; set_memory_level never goes below."""
        return self.slot.memory_floor

    def next_memory_level(self, level: int) -> int:
        """The next level of the out-of-memory ladder (past a saving already in effect)."""
        return self.slot.next_memory_level(level)

    def take_load_notice(self) -> str:
        """What the last load gave up to fit in memory, for the user; "" once it was taken."""
        return self.slot.take_load_notice()

    @property
    def lora(self) -> LoraManager | None:
        """The loaded pipeline's LoRA manager (None when no model is loaded)."""
        return self.adapters.lora

    def load_model(self, name: str | None = None) -> None:
        """Load a model (a MODEL_CHOICES name; None: MODEL_ID) with the device and memory settings."""
        self.slot.load(name)
        source = self.slot.source
        folder = Path(source.location) if source and source.kind == "folder" else None
        self.adapters.attach(self.slot.pipe, folder)
        step_cache.configured_interval(self.config.optimization.step_cache, self.device)  # warns

    def ensure_model(self, name: str | None) -> bool:
        """Make `name` (a MODEL_CHOICES name) the resident model; return whether it was switched.

        Only one model is resident: the old pipeline is freed before the new one loads.
        Embeddings loaded before are loaded again when they fit the new text encoder.
        """
        if name is None or (self.loaded and self.models.resolve(name) == self.model_name):
            return False
        wanted, previous = self.models.resolve(name), self.model_name
        started = time.perf_counter()
        self.unload()
        try:
            self.load_model(wanted)
        except Exception:
            if previous and previous != wanted:  # keep serving the others: load the old one back
                log.warning("model %s failed to load; loading %s again", wanted, previous)
                self.ensure_model(previous)
            raise
        self.adapters.reload_embeddings(wanted)
        log.info("switched model to %s in %.1fs", wanted, time.perf_counter() - started)
        return True

    def set_memory_level(self, level: int) -> None:
        """Apply the first `level` rungs of `memory_rungs` on top of the configured settings."""
        if level != self.slot.memory_level:
            self.adapters.unfuse()  # a rung may offload the UNet: never with a LoRA fused in
        self.slot.set_memory_level(level)

    def draft_by_default(self, model: str | None = None) -> bool:
        """Whether a request (on `model`; None: the loaded one) that does not say is a draft."""
        device = self.device if self.loaded else resolve_device(self.config.model.device)
        width = self.models.width(model) if model else self.text_width
        return self.adapters.draft_by_default(device, width)

    def preview(self, latents: Any, max_side: int = 128) -> Any:
        """A small image of the first latent: the tiny VAE when loaded, else a linear guess."""
        return self.slot.preview(latents, max_side)

    def prepare(self, request: GenerationRequest) -> ResolvedRequest:
        """Validate a request and fill its defaults (RequestError naming the field).

        A request whose `loras` is None gets the LoRAs its prompt's <lora:…> tags name, resolved
        with `lora_resolver` (unknown names are refused). A region job that names no model runs
        on the resident model's 9-channel inpainting partner in MODEL_CHOICES, if it has one.
        """
        try:
            if request.loras is None and "<" in str(request.prompt):
                stack = resolve_lora_stack(
                    str(request.prompt), (), self.lora_resolver, self.config.generation.max_loras
                )
                request = replace(request, loras=[use.to_entry() for use in stack])
            if request.model is not None:
                request = replace(request, model=self.models.resolve(request.model))
            elif is_region_job(request):
                request = replace(request, model=self.models.inpaint_partner(self.model_name))
        except ValueError as exc:
            raise RequestError.from_value_error(exc) from None
        defaults = self.model_defaults
        if request.model is not None and request.model != self.model_name:
            defaults = self.models.defaults(request.model, self.config.model.allow_ckpt)
        # A request that does not say is full quality here: GEN_DRAFT_DEFAULT is the bot's
        # (/imagine writes it into the job); the command line and the Python API draft when asked.
        return resolve_request(request, self.config.generation, defaults)

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int | None = None,
        scheduler: str | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        loras: list[tuple[str | Path, float]] | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        init_image: Any = None,
        strength: float | None = None,
        model: str | None = None,
    ) -> list[Any]:
        """Generate images (PIL) for a prompt; image i uses seed+i. See `last_result` for details.

        `loras` stacks LoRAs by registered name or path with a weight each, with any
        <lora:name:w> tags of the prompt, on top of `lora`. With `init_image` (a PIL image or a
        file path) this is img2img: `strength` (0.05-1, default 0.6) is how much of the picture
        is repainted. `model` (a MODEL_CHOICES name) switches the resident model first.
        """
        stack = resolve_lora_stack(
            prompt, loras or (), self.lora_resolver, self.config.generation.max_loras
        )
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            width=width,
            height=height,
            num_images=num_images,
            scheduler=scheduler,
            lora=lora,
            lora_scale=lora_scale,
            loras=[use.to_entry() for use in stack],
            strength=strength,
            model=model,
        )
        with img2img.init_path(init_image) as path:
            request.init_image = path
            return self.run(request, progress=progress, cancel=cancel).images

    def upscale(
        self,
        image: Any,
        factor: float = 2.0,
        strength: float = UPSCALE_STRENGTH,
        prompt: str | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """Enlarge an image (PIL or path) by `factor`, then repaint it lightly (hires fix).

        Without `prompt`, the prompt, negative prompt, seed, sampler, steps and CFG come from
        the image's PNG `parameters` text (ValueError when it has none).
        """
        request = img2img.upscale_request(
            image, factor, strength, prompt, seed, negative_prompt, num_inference_steps,
            guidance_scale, scheduler,
        )  # fmt: skip
        with img2img.init_path(image) as path:
            request.init_image = path
            return self.run(request, progress=progress, cancel=cancel).images[0]

    def inpaint(
        self,
        image: Any,
        mask: Any,
        prompt: str | None = None,
        strength: float | None = None,
        mask_blur: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        **fields: Any,
    ) -> Any:
        """Repaint the white part of `mask` in `image`; return the new image.

        See engine.inpaint.run_inpaint (masks, defaults from the image's PNG parameters).
        """
        fields.update(strength=strength, mask_blur=mask_blur)
        return inpaint.run_inpaint(self.run, image, mask, prompt, progress, cancel, fields)

    def outpaint(
        self,
        image: Any,
        zoom: float | None = None,
        pan: str | None = None,
        prompt: str | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        **fields: Any,
    ) -> Any:
        """Zoom out (1.5, 2) or pan (left, right, up, down) and paint the new area; see
        engine.inpaint.run_outpaint."""
        return inpaint.run_outpaint(self.run, image, zoom, pan, prompt, progress, cancel, fields)

    def run(
        self,
        request: GenerationRequest | ResolvedRequest,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Run one request and return a GenerationResult (images, seeds, parameters, timings)."""
        resolved = request if isinstance(request, ResolvedRequest) else self.prepare(request)
        self.ensure_model(resolved.model)
        if not self.loaded:
            raise EngineError("no model loaded; call load_model() first")
        started = time.perf_counter()
        self.adapters.select(resolved)
        self.slot.select_scheduler(resolved.scheduler)
        pipe = self.pipe
        guidance = resolved.guidance_scale > 1.0
        generators = [torch.Generator("cpu").manual_seed(s) for s in resolved.seeds]
        warnings: list[str] = []
        if resolved.draft and resolved.negative_prompt:
            warnings.append(DRAFT_NOTE if guidance else DRAFT_NO_NEGATIVE)
        kwargs, notes = prompt_arguments(
            pipe, resolved.prompt, resolved.negative_prompt, pipe._execution_device, guidance
        )
        warnings += notes
        steps_done = 0

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
            nonlocal steps_done
            steps_done = step + 1
            if progress is not None:
                progress(step + 1, pipeline.num_timesteps, tensors.get("latents"))
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"cancelled after step {step + 1}")
            return tensors

        chosen = pipeline_call(pipe, resolved, self.upscaler(), self.slot.tiny_vae)
        kwargs.update(chosen.kwargs)
        tile = self.slot.vae_tile_size(
            resolved.width, resolved.height, resolved.num_images, resolved.upscale is not None
        )
        interval = step_cache.run_interval(
            self.config.optimization.step_cache, self.device, resolved
        )
        steps = resolved.num_inference_steps
        with vae_tiles.vae_pass(pipe.vae, tile), step_cache.cached_steps(pipe, interval, steps):
            output = chosen.call(
                **kwargs,
                num_inference_steps=resolved.num_inference_steps,
                guidance_scale=resolved.guidance_scale,
                num_images_per_prompt=resolved.num_images,
                generator=generators,
                callback_on_step_end=on_step_end,
            )
        images = chosen.images(pipe, output)
        seconds = time.perf_counter() - started
        upscaler = img2img.upscaler_name(self.config.generation.upscaler)
        safety = self.slot.safety
        result = GenerationResult(
            images=images,
            seeds=list(resolved.seeds),
            parameters=[
                outputs.parameters_text(
                    resolved, s, self.model_name, self.adapters.default_lora, upscaler
                )
                for s in resolved.seeds
            ],
            request=resolved,
            seconds=seconds,
            seconds_per_step=seconds / max(1, steps_done),
            warnings=warnings,
            nsfw=safety.flags(images) if safety is not None else [False] * len(images),
        )
        for image, seed, text in zip(images, result.seeds, result.parameters, strict=True):
            image.info["parameters"] = text
            image.info["seed"] = seed
        self.last_result = result
        return result

    def upscaler(self) -> img2img.ModelUpscaler | None:
        """The GEN_UPSCALER model, loaded on first use; None for the plain resampler."""
        ref = self.config.generation.upscaler.strip()
        if not ref:
            return None
        if self._upscale_model is None:
            self._upscale_model = img2img.ModelUpscaler(ref, self.device)
        return self._upscale_model

    def save_images(
        self, images: list[Any], prefix: str = "gen", output_dir: str | Path | None = None
    ) -> list[Path]:
        """Save PNGs with their parameters chunk as OUT/PREFIX_YYYYMMDD_HHMMSS_NNN.png."""
        folder = Path(output_dir) if output_dir is not None else self.config.generation.output_dir
        paths = outputs.save_pngs(images, folder, prefix)
        last = self.last_result
        # Identity, not ==: PIL compares images pixel by pixel.
        if last is not None and [id(i) for i in last.images] == [id(i) for i in images]:
            last.paths = paths
        return paths

    def load_lora_weights(
        self, path: str | Path, scale: float = 1.0, name: str | None = None
    ) -> str:
        """Load a LoRA and make it the default for later generations; return its adapter name."""
        return self.adapters.load_lora_weights(path, scale, name)

    def unload_lora_weights(self) -> None:
        """Unload every LoRA and return to the base model."""
        self.adapters.unload_lora_weights()

    def load_embedding(
        self, path: str | Path, name: str, remember_unfit: bool = False
    ) -> EmbeddingInfo:
        """Load a textual-inversion embedding once; prompts then use it by writing `name`.

        With `remember_unfit`, an embedding refused for its width is still loaded after a
        switch to a model it fits (the registered ones, at start-up).
        """
        return self.adapters.load_embedding(path, name, remember_unfit)

    def unload_embedding(self, name: str) -> bool:
        """Forget a loaded embedding; its name is a plain word again. False if it was not loaded."""
        return self.adapters.unload_embedding(name)

    def unload(self) -> None:
        """Free the pipeline and its memory (GPU memory included)."""
        self.adapters.detach()  # first: the LoRA manager holds the pipeline too
        self.slot.unload()
