"""TextToImageGenerator: the engine's Python API (load, generate, save, LoRA, unload)."""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from engine import img2img
from engine.config import AppConfig
from engine.embeddings import EmbeddingError, EmbeddingInfo, EmbeddingSet, text_encoder_width
from engine.errors import EngineError, GenerationCancelled
from engine.lora import WEIGHT_NAME, LoraManager, lora_display_name, resolve_lora_file
from engine.lora_stack import LoraResolver, folder_resolver, resolve_lora_stack
from engine.metadata import format_parameters, save_png
from engine.model_choices import ModelCatalog
from engine.optimizations import (
    AttentionProcessors,
    apply_memory_level,
    apply_optimizations,
    attention_processors,
    memory_rungs,
    precision_name,
    resolve_device,
    resolve_dtype,
)
from engine.pipeline import (
    ModelSource,
    load_pipeline,
    offline,
    read_model_defaults,
    resolve_model_source,
)
from engine.preview import preview_or_none
from engine.prompts import prompt_arguments
from engine.requests import GenerationRequest, GenerationResult, ResolvedRequest, resolve_request
from engine.schedulers import make_scheduler
from engine.vram import resolve_optimizations

log = logging.getLogger(__name__)

# progress(step, total, latents) is called after every denoising step on the engine thread.
ProgressCallback = Callable[[int, int, Any], None]


# The out-of-memory ladder: each rung adds one saving to those below it.
MEMORY_RUNGS = memory_rungs()


FAST_ADAPTER = "lcm_fast"
FAST_NOTE = "fast mode: negative prompts have little effect"


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
        self.pipe: Any = None
        self.lora: LoraManager | None = None
        self.embeddings: EmbeddingSet | None = None
        self.source: ModelSource | None = None
        self.device = "cpu"
        self.dtype = torch.float32
        self.preset = "none"
        self.applied: list[str] = []
        self.model_defaults: dict[str, Any] = {}
        self.model_name = ""
        self.last_result: GenerationResult | None = None
        self._scheduler_name = ""
        self._base_scheduler_config: dict[str, Any] = {}
        self._default_lora: tuple[str, float] | None = None
        self._safety: tuple[Any, Any] | None = None
        self._opt: Any = None
        self.tiny_vae: Any = None
        self.memory_level = 0
        self.memory_rungs = MEMORY_RUNGS
        self._attention: AttentionProcessors = {}
        self._upscale_model: img2img.ModelUpscaler | None = None
        model = self.config.model
        self.models = ModelCatalog(model.model_id, model.choices, model.cache_dir)
        self._embedding_files: dict[str, Path] = {}  # loaded again after a model switch

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded."""
        return self.pipe is not None

    def load_model(self, name: str | None = None) -> None:
        """Load a model (a MODEL_CHOICES name; None: MODEL_ID) with the device and memory settings."""
        cfg = self.config
        model_id = self.models.source(name) if name else cfg.model.model_id
        source = resolve_model_source(model_id, cfg.model.allow_ckpt)
        self.device = resolve_device(cfg.model.device)
        self.dtype = resolve_dtype(cfg.model.precision, self.device)
        opt, self.preset = resolve_optimizations(cfg.optimization, self.device)
        started = time.perf_counter()
        pipe = load_pipeline(
            source,
            dtype=self.dtype,
            cache_dir=cfg.model.cache_dir,
            local_files_only=cfg.model.local_files_only,
            safety_checker=cfg.model.safety_checker,
            single_file_config=cfg.model.single_file_config or None,
            allow_ckpt=cfg.model.allow_ckpt,
        )
        if getattr(pipe, "safety_checker", None) is not None:
            # Run the checker ourselves so flagged images are marked, not blacked out.
            self._safety = (pipe.safety_checker, pipe.feature_extractor)
            pipe.safety_checker = None
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self.applied = apply_optimizations(pipe, opt, self.device)
        self._opt = opt
        self.memory_level = 0
        self.pipe = pipe
        self.source = source
        self.model_defaults = read_model_defaults(source)
        self.model_name = self.models.resolve(name)
        self.models.remember_width(self.model_name, text_encoder_width(pipe))
        self.lora = LoraManager(pipe)
        self.embeddings = EmbeddingSet(pipe)
        self._scheduler_name = ""
        self.tiny_vae = self._load_tiny_vae(opt)
        log.info(
            "loaded %s on %s (%s, preset %s%s) in %.1fs",
            self.model_name,
            self.device,
            precision_name(self.dtype),
            self.preset,
            (", " + ", ".join(self.applied)) if self.applied else "",
            time.perf_counter() - started,
        )

    @property
    def text_width(self) -> int | None:
        """The loaded text encoder's width (768 SD 1.x, 1024 SD 2.x): the architecture family."""
        return None if self.pipe is None else text_encoder_width(self.pipe)

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
        assert self.embeddings is not None
        for token, path in self._embedding_files.items():
            try:
                self.embeddings.load(path, token)
            except EmbeddingError as exc:
                log.info("embedding %s is not loaded on %s: %s", token, wanted, exc)
        log.info("switched model to %s in %.1fs", wanted, time.perf_counter() - started)
        return True

    def _load_tiny_vae(self, opt: Any) -> Any:
        """Load the tiny autoencoder (TAESD) when configured; optionally make it the decoder."""
        if not opt.tiny_vae:
            return None
        from diffusers import AutoencoderTiny

        try:
            tiny = AutoencoderTiny.from_pretrained(
                opt.tiny_vae,
                dtype=self.dtype,
                cache_dir=str(self.config.model.cache_dir),
                local_files_only=self.config.model.local_files_only or offline(),
                use_safetensors=None if self.config.model.allow_ckpt else True,
            )
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"tiny VAE {opt.tiny_vae!r} is not available offline; download it once "
                f"(e.g. madebyollin/taesd) or clear OPT_TINY_VAE ({type(exc).__name__})"
            ) from exc
        tiny.to(self.device).eval()
        if opt.tiny_vae_decode:
            self.pipe.vae = tiny
            self.applied.append("tiny VAE decode")
        return tiny

    def preview(self, latents: Any, max_side: int = 128) -> Any:
        """A small image of the first latent: the tiny VAE when loaded, else a linear guess."""
        if self.tiny_vae is None or latents is None:
            return preview_or_none(latents, max_side)
        with torch.no_grad():
            decoded = self.tiny_vae.decode(latents[:1].to(self.tiny_vae.dtype)).sample
        from PIL import Image

        array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
        image = Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
        image.thumbnail((max_side, max_side))
        return image

    def prepare(self, request: GenerationRequest) -> ResolvedRequest:
        """Validate a request and fill its defaults (raises ValueError naming the parameter).

        A request whose `loras` is None gets the LoRAs its prompt's <lora:…> tags name, resolved
        with `lora_resolver` (unknown names raise ValueError).
        """
        if request.loras is None and "<" in str(request.prompt):
            stack = resolve_lora_stack(
                str(request.prompt), (), self.lora_resolver, self.config.generation.max_loras
            )
            request = replace(request, loras=[use.to_entry() for use in stack])
        defaults = self.model_defaults
        if request.model is not None:
            request = replace(request, model=self.models.resolve(request.model))
            if request.model != self.model_name:
                defaults = self.models.defaults(request.model, self.config.model.allow_ckpt)
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
        strength: float = img2img.UPSCALE_STRENGTH,
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
        self._select_lora(resolved)
        self._select_scheduler(resolved.scheduler)
        pipe = self.pipe
        guidance = resolved.guidance_scale > 1.0
        generators = [torch.Generator("cpu").manual_seed(s) for s in resolved.seeds]
        warnings: list[str] = [FAST_NOTE] if resolved.fast and resolved.negative_prompt else []
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

        if resolved.init_image is not None:
            call = img2img.img2img_pipeline(pipe)
            kwargs["image"] = img2img.init_pixels(resolved, self._upscaler())
            kwargs["strength"] = resolved.strength
        else:
            call = pipe
            kwargs.update(width=resolved.width, height=resolved.height)
        with img2img.vae_tiling(pipe.vae, on=resolved.upscale is not None):
            output = call(
                **kwargs,
                num_inference_steps=resolved.num_inference_steps,
                guidance_scale=resolved.guidance_scale,
                num_images_per_prompt=resolved.num_images,
                generator=generators,
                callback_on_step_end=on_step_end,
            )
        images = list(output.images)
        seconds = time.perf_counter() - started
        result = GenerationResult(
            images=images,
            seeds=list(resolved.seeds),
            parameters=[self.parameters_text(resolved, s) for s in resolved.seeds],
            request=resolved,
            seconds=seconds,
            seconds_per_step=seconds / max(1, steps_done),
            warnings=warnings,
            nsfw=self._check_nsfw(images),
        )
        for image, seed, text in zip(images, result.seeds, result.parameters, strict=True):
            image.info["parameters"] = text
            image.info["seed"] = seed
        self.last_result = result
        return result

    def parameters_text(self, resolved: ResolvedRequest, seed: int) -> str:
        """The PNG parameters text of one image of a request."""
        lora_name = resolved.lora_name or (
            lora_display_name(resolved.lora) if resolved.lora else None
        )
        scale: float | None = resolved.lora_scale
        if lora_name is None and self._default_lora is not None:
            lora_name, scale = self._default_lora
        return format_parameters(
            prompt=resolved.prompt,
            negative_prompt=resolved.negative_prompt,
            steps=resolved.num_inference_steps,
            sampler=resolved.scheduler,
            cfg_scale=resolved.guidance_scale,
            seed=seed,
            width=resolved.width,
            height=resolved.height,
            model=self.model_name,
            lora=lora_name,
            lora_scale=scale,
            extra=self._extra_parameters(resolved),
        )

    def _extra_parameters(self, resolved: ResolvedRequest) -> dict[str, Any] | None:
        extra: dict[str, Any] = {}
        if resolved.loras:
            extra["LoRAs"] = ", ".join(f"{u.name}:{u.weight:g}" for u in resolved.loras)
        if resolved.fast:
            extra["Fast"] = "LCM-LoRA"
        if resolved.init_image is not None and resolved.strength is not None:
            name = self._upscaler_name()
            extra.update(img2img.img2img_fields(resolved.strength, resolved.upscale, name))
        return extra or None

    def _upscaler(self) -> img2img.ModelUpscaler | None:
        """The GEN_UPSCALER model, loaded on first use; None for the plain resampler."""
        ref = self.config.generation.upscaler.strip()
        if not ref:
            return None
        if self._upscale_model is None:
            self._upscale_model = img2img.ModelUpscaler(ref, self.device)
        return self._upscale_model

    def _upscaler_name(self) -> str:
        ref = self.config.generation.upscaler.strip()
        return Path(ref).stem if ref else img2img.RESAMPLER

    def set_memory_level(self, level: int) -> None:
        """Apply the first `level` rungs of `memory_rungs` on top of the configured settings."""
        level = max(0, min(level, len(self.memory_rungs)))
        if level == self.memory_level or not self.loaded:
            self.memory_level = level
            return
        if self.memory_level == 0:
            # What is in use now (xformers, SDPA, custom) is what stepping back down restores.
            self._attention = attention_processors(self.pipe)
        active = self.memory_rungs[:level]
        apply_memory_level(self.pipe, self._opt, self.device, active, self._attention)
        self.memory_level = level
        log.info("memory level %d (%s)", level, ", ".join(active) or "as configured")

    def _select_lora(self, resolved: ResolvedRequest) -> None:
        assert self.lora is not None
        active: list[tuple[str, float]] = []
        if resolved.lora:
            active.append((self.lora.load(resolved.lora, resolved.lora_name), resolved.lora_scale))
        elif self._default_lora is not None:
            active.append(self._default_lora)
        for use in resolved.loras:
            adapter = self.lora.load(use.path, use.name)
            active = [pair for pair in active if pair[0] != adapter] + [(adapter, use.weight)]
        if resolved.fast:
            active.append((self.lora.load(self._fast_lora_file(), FAST_ADAPTER), 1.0))
        self.lora.activate_many(active)

    def _fast_lora_file(self) -> Path:
        """The local file of the LCM-LoRA for fast mode (from the hub cache for a hub id)."""
        ref = self.config.generation.fast_lora.strip()
        path = Path(ref).expanduser()
        if path.exists() or not ref or ref.count("/") != 1:
            return resolve_lora_file(path)
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    ref,
                    WEIGHT_NAME,
                    cache_dir=str(self.config.model.cache_dir),
                    local_files_only=self.config.model.local_files_only or offline(),
                )
            )
        except Exception as exc:  # hub errors vary by version; the advice is the same
            raise EngineError(
                f"fast mode needs the LCM-LoRA {ref!r}, which is not available offline; run once "
                f"with internet access or set GEN_FAST_LORA to a local file ({type(exc).__name__})"
            ) from exc

    def _select_scheduler(self, name: str) -> None:
        if name != self._scheduler_name:
            self.pipe.scheduler = make_scheduler(name, self._base_scheduler_config)
            self._scheduler_name = name

    def _check_nsfw(self, images: list[Any]) -> list[bool]:
        if self._safety is None:
            return [False] * len(images)
        import numpy as np

        checker, extractor = self._safety
        inputs = extractor(images, return_tensors="pt").to(self.device)
        arrays = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])
        checker.to(self.device)
        _, flags = checker(images=arrays, clip_input=inputs.pixel_values.to(self.dtype))
        return [bool(f) for f in flags]

    def save_images(
        self, images: list[Any], prefix: str = "gen", output_dir: str | Path | None = None
    ) -> list[Path]:
        """Save PNGs with their parameters chunk as OUT/PREFIX_YYYYMMDD_HHMMSS_NNN.png."""
        folder = Path(output_dir) if output_dir is not None else self.config.generation.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        safe_prefix = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)[:40] or "gen"
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        paths: list[Path] = []
        index = 0
        for image in images:
            while (path := folder / f"{safe_prefix}_{stamp}_{index:03d}.png").exists():
                index += 1
            save_png(image, path, image.info.get("parameters"))
            paths.append(path)
            index += 1
        last = self.last_result
        # Identity, not ==: PIL compares images pixel by pixel.
        if last is not None and [id(i) for i in last.images] == [id(i) for i in images]:
            last.paths = paths
        return paths

    def load_lora_weights(
        self, path: str | Path, scale: float = 1.0, name: str | None = None
    ) -> str:
        """Load a LoRA and make it the default for later generations; return its adapter name."""
        if not self.loaded:
            raise EngineError("no model loaded; call load_model() first")
        assert self.lora is not None
        adapter = self.lora.load(path, name)
        self._default_lora = (adapter, float(scale))
        self.lora.activate(adapter, scale)
        return adapter

    def load_embedding(
        self, path: str | Path, name: str, remember_unfit: bool = False
    ) -> EmbeddingInfo:
        """Load a textual-inversion embedding once; prompts then use it by writing `name`.

        With `remember_unfit`, an embedding refused for its width is still loaded after a
        switch to a model it fits (the registered ones, at start-up).
        """
        if self.embeddings is None:
            raise EngineError("no model loaded; call load_model() first")
        try:
            info = self.embeddings.load(path, name)
        except EmbeddingError:
            if remember_unfit and Path(path).is_file():
                self._embedding_files[name] = Path(path)
            raise
        self._embedding_files[name] = Path(path)
        return info

    def unload_embedding(self, name: str) -> bool:
        """Forget a loaded embedding; its name is a plain word again. False if it was not loaded."""
        self._embedding_files.pop(name, None)  # nor is it loaded again after a model switch
        return self.embeddings is not None and self.embeddings.unload(name)

    def unload_lora_weights(self) -> None:
        """Unload every LoRA and return to the base model."""
        if self.lora is not None:
            self.lora.unload_all()
        self._default_lora = None

    def unload(self) -> None:
        """Free the pipeline and its memory (GPU memory included)."""
        self.pipe = None
        self.lora = None
        self.embeddings = None
        self._safety = None
        self._default_lora = None
        self._attention = {}
        self.tiny_vae = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
