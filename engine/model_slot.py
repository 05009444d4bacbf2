"""ModelSlot: the one resident model (load, optimizations, memory rungs, sampler, tiny VAE)."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import torch

from engine import vae_tiles
from engine.config import AppConfig
from engine.cpu import apply_cpu_threads
from engine.embeddings import text_encoder_width
from engine.errors import EngineError
from engine.model_choices import ModelCatalog
from engine.optimizations import (
    VAE_SLICING_TILING,
    AttentionProcessors,
    apply_memory_level,
    apply_optimizations,
    attention_processors,
    memory_rungs,
    precision_name,
    resolve_device,
    resolve_dtype,
)
from engine.outputs import SafetyChecker
from engine.pipeline import (
    ModelSource,
    load_pipeline,
    offline,
    read_model_defaults,
    resolve_model_source,
)
from engine.preview import preview_or_none
from engine.schedulers import make_scheduler
from engine.vram import resolve_optimizations
from engine.weight_storage import apply_weight_storage

log = logging.getLogger(__name__)

# The out-of-memory ladder: each rung adds one saving to those below it.
MEMORY_RUNGS = memory_rungs()


class ModelSlot:
    """Holds the resident pipeline with its device, precision, optimizations and memory level."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        model = config.model
        self.models = ModelCatalog(model.model_id, model.choices, model.cache_dir)
        self.pipe: Any = None
        self.source: ModelSource | None = None
        self.device = "cpu"
        self.dtype = torch.float32
        self.preset = "none"
        self.applied: list[str] = []
        self.model_defaults: dict[str, Any] = {}
        self.model_name = ""
        self.safety: SafetyChecker | None = None
        self.tiny_vae: Any = None
        self.scheduler_name = ""  # the sampler on the pipeline now ("" right after a load)
        self.memory_level = 0
        self.memory_rungs = MEMORY_RUNGS
        self._base_scheduler_config: dict[str, Any] = {}
        self._opt: Any = None
        self._attention: AttentionProcessors = {}

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded."""
        return self.pipe is not None

    @property
    def text_width(self) -> int | None:
        """The loaded text encoder's width (768 SD 1.x, 1024 SD 2.x): the architecture family."""
        return None if self.pipe is None else text_encoder_width(self.pipe)

    def load(self, name: str | None = None) -> None:
        """Load a model (a MODEL_CHOICES name; None: MODEL_ID) with the device and memory settings."""
        cfg = self.config
        model_id = self.models.source(name) if name else cfg.model.model_id
        source = resolve_model_source(model_id, cfg.model.allow_ckpt)
        self.device = resolve_device(cfg.model.device)
        self.dtype = resolve_dtype(cfg.model.precision, self.device)
        if self.device == "cpu":
            threads, why = apply_cpu_threads(cfg.optimization.cpu_threads)
            log.info("torch threads: %d (%s)", threads, why)
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
            self.safety = SafetyChecker(
                pipe.safety_checker, pipe.feature_extractor, self.device, self.dtype
            )
            pipe.safety_checker = None
        self._base_scheduler_config = dict(pipe.scheduler.config)
        # Before apply_optimizations: offload hooks must move the fp8 copies, not the originals.
        self.applied = apply_weight_storage(pipe, opt.weight_storage, self.dtype)
        self.applied += apply_optimizations(pipe, opt, self.device)
        # Before the pipeline is published: a failed tiny VAE load leaves no half-loaded model.
        self.tiny_vae = self._load_tiny_vae(pipe, opt)
        self._opt = opt
        self.memory_level = 0
        self.pipe = pipe
        self.source = source
        self.model_defaults = read_model_defaults(source)
        self.model_name = self.models.resolve(name)
        self.models.remember_width(self.model_name, text_encoder_width(pipe))
        self.scheduler_name = ""
        log.info(
            "loaded %s on %s (%s, preset %s%s) in %.1fs",
            self.model_name,
            self.device,
            precision_name(self.dtype),
            self.preset,
            (", " + ", ".join(self.applied)) if self.applied else "",
            time.perf_counter() - started,
        )

    def unload(self) -> None:
        """Free the pipeline and its memory (GPU memory included)."""
        self.pipe = None
        self.safety = None
        self._attention = {}
        self.tiny_vae = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load_tiny_vae(self, pipe: Any, opt: Any) -> Any:
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
            pipe.vae = tiny
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

    def select_scheduler(self, name: str) -> None:
        """Put the sampler `name` on the pipeline (built from the model's own scheduler config)."""
        if name != self.scheduler_name:
            self.pipe.scheduler = make_scheduler(name, self._base_scheduler_config)
            self.scheduler_name = name

    def vae_tiling_mode(self, upscale: bool) -> str:
        """ALWAYS after running out of memory; WHEN_NEEDED with the setting or for an upscale."""
        if VAE_SLICING_TILING in self.memory_rungs[: self.memory_level]:
            return vae_tiles.ALWAYS
        wanted = upscale or (self._opt is not None and self._opt.enable_vae_tiling)
        return vae_tiles.WHEN_NEEDED if wanted else vae_tiles.OFF

    def vae_tile_size(self, width: int, height: int, images: int, upscale: bool) -> int | None:
        """The tile side (px) for this run's VAE encode/decode, or None to run them whole."""
        vae = self.pipe.vae
        at_once = 1 if getattr(vae, "use_slicing", False) else images
        mode = self.vae_tiling_mode(upscale)
        return vae_tiles.tile_size(vae, self.device, width, height, at_once, mode)

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
